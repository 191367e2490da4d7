"""The one way a request's final reply leaves a service: stored, then sent (`schemas.answers`).

`send_final` publishes the `Result` or `Error` to `IRIS_ANSWERS` and waits for the acknowledgement, then
sends it to the client's inbox and to the request's live subject (where a retry that joined listens);
only then may the caller delete the request from `IRIS_REQUESTS`. A store that fails even after a leader
election was waited out does not keep the answer from its client: it is sent all the same, and the failure
logged. `fetch_final` reads a stored final back by subject (a retry, a reconnect, `iris answers`).

Every final costs one acknowledged publish, so the store is pipelined (`AnswerStore`, one per
connection): the finals of one event-loop turn go out together, each with its reply subject under one
wildcard subscription, and their acknowledgements are awaited together under one timer, without the
per-publish inbox, timer and JSON parse of a JetStream request (a worker finishing hundreds of leases a
second spends about half as much CPU per stored final; `iris bench retry`).
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from runtime.connection import per_connection
from runtime.stream_ops import Unavailable, while_unavailable
from schemas import headers as h
from schemas.answers import answer_headers, storable
from schemas.messages import Error, Result, encoder
from schemas.subjects import answer_get_subject, answer_subject, live_subject

STORE_GIVE_UP_S = 30.0
STORE_ACK_TIMEOUT_S = 2.0
WRONG_LAST_SEQUENCE = 10071  # JetStream's err_code: the subject holds a final already, the first one stays
_log = structlog.get_logger("iris.answers")


@dataclass(frozen=True)
class StoredFinal:
    """A final reply as stored: its kind (`Iris-Kind`: result or error) and its encoded body."""

    kind: str
    data: bytes
    subject: str = ""
    stored_at: str = ""  # Nats-Time-Stamp, RFC 3339


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct):
    seq: int = 0
    error: _ApiError | None = None


_ack_decoder = msgspec.json.Decoder(_PubAck)


class AnswerStore:
    """Pipelined, acknowledged publishes to `IRIS_ANSWERS` on one connection (see the module docstring).
    An acknowledgement that does not come within `STORE_ACK_TIMEOUT_S` fails its publish with a NATS
    timeout, which `store_final` retries: a final that did get through is refused the second time (its
    subject holds it already), and that counts as stored."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.prefix = nc.new_inbox()
        self._tokens = itertools.count()
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._turn: list[str] | None = None  # the replies published in this event-loop turn
        self._subscribed: asyncio.Future[None] | None = None

    async def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        """Store one message, acknowledged; the errors `while_unavailable` retries when JetStream cannot take it now."""
        subscribed = self._subscribed
        if subscribed is None or (subscribed.done() and (subscribed.cancelled() or subscribed.exception())):
            subscribed = self._subscribed = asyncio.ensure_future(self._subscribe())
        await asyncio.shield(subscribed)
        reply = f"{self.prefix}.{next(self._tokens)}"
        ack = self._waiting[reply] = asyncio.get_running_loop().create_future()
        self._join_turn(reply)
        try:
            await self.nc.publish(subject, data, reply=reply, headers=headers)
            _check(await ack)
        finally:
            self._waiting.pop(reply, None)

    async def _subscribe(self) -> None:
        await self.nc.subscribe(f"{self.prefix}.*", cb=self._acked)

    async def _acked(self, msg: Msg) -> None:
        ack = self._waiting.get(msg.subject)
        if ack is not None and not ack.done():
            ack.set_result(msg)

    def _join_turn(self, reply: str) -> None:
        if self._turn is None:
            self._turn = []
            asyncio.get_running_loop().call_soon(self._close_turn)
        self._turn.append(reply)

    def _close_turn(self) -> None:
        turn, self._turn = self._turn or [], None
        asyncio.get_running_loop().call_later(STORE_ACK_TIMEOUT_S, self._time_out, turn)

    def _time_out(self, turn: list[str]) -> None:
        for reply in turn:
            ack = self._waiting.get(reply)
            if ack is not None and not ack.done():
                ack.set_exception(NatsTimeout())


def _check(msg: Msg) -> None:
    """Raise for an acknowledgement that is not a success, except the refusal of a second final."""
    if (msg.headers or {}).get("Status") == "503":
        raise NoRespondersError  # no stream answers (yet): a leader election, or the broker not up
    ack = _ack_decoder.decode(msg.data)
    if ack.error is None or ack.error.err_code == WRONG_LAST_SEQUENCE:
        return
    if ack.error.code == 503:
        raise Unavailable(ack.error.description)
    raise RuntimeError(f"IRIS_ANSWERS refused the final: {ack.error.description}")


answer_store = per_connection(AnswerStore)


async def send_final(nc: NATS, reply_to: str, request_id: str, message: Result | Error, *, owner: str | None) -> bool:
    """Store the final (acknowledged), then send it to `reply_to` ("" = nobody) and the live subject.
    False when it could not be stored (it was sent anyway)."""
    kind = h.KIND_RESULT if isinstance(message, Result) else h.KIND_ERROR
    data = encoder.encode(message)
    stored = await store_final(nc, request_id, owner, kind, data)
    await _deliver(nc, reply_to, request_id, owner, kind, data)
    return stored


async def store_final(nc: NATS, request_id: str, owner: str | None, kind: str, data: bytes) -> bool:
    if not storable(request_id, owner):
        return False
    store = answer_store(nc)
    subject = answer_subject(request_id, owner)
    headers = answer_headers(kind, request_id)
    try:
        await while_unavailable(lambda: store.publish(subject, data, headers), STORE_GIVE_UP_S)
    except Exception as exc:
        _log.error("final reply not stored; sent all the same", request_id=request_id, error=str(exc))
        return False
    return True


async def redeliver(nc: NATS, reply_to: str, request_id: str, owner: str | None, final: StoredFinal) -> None:
    """Send a stored final again (a re-run found its request already answered)."""
    await _deliver(nc, reply_to, request_id, owner, final.kind, final.data)


async def _deliver(nc: NATS, reply_to: str, request_id: str, owner: str | None, kind: str, data: bytes) -> None:
    headers = {h.KIND: kind, h.REQUEST_ID: request_id}
    if reply_to:
        await nc.publish(reply_to, data, headers=headers)
    if storable(request_id, owner):
        await nc.publish(live_subject(request_id, owner), data, headers=headers)


async def fetch_final(nc: NATS, request_id: str, owner: str | None, timeout_s: float = 2.0) -> StoredFinal | None:
    """The stored final of a request; None when there is none (not finished, or older than the window)."""
    if not storable(request_id, owner):
        return None

    async def attempt() -> Msg:
        reply = await nc.request(answer_get_subject(request_id, owner), b"", timeout=timeout_s)
        status = (reply.headers or {}).get("Status")
        if status is not None and status not in ("404", "408"):
            raise Unavailable(f"direct get answered status {status}")
        return reply

    reply = await while_unavailable(attempt, STORE_GIVE_UP_S)
    return stored_final(reply)


def stored_final(msg: Msg) -> StoredFinal | None:
    """A direct-get reply (or a message read from the stream) as a `StoredFinal`; None for a 404."""
    headers = msg.headers or {}
    kind = headers.get(h.KIND, "")
    if headers.get("Status") is not None or kind not in (h.KIND_RESULT, h.KIND_ERROR):
        return None
    return StoredFinal(kind, msg.data, headers.get(h.NATS_SUBJECT, msg.subject), headers.get(h.NATS_TIMESTAMP, ""))
