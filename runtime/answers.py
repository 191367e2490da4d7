"""The one way a request's final reply leaves a service: stored, then sent (`schemas.answers`).

`send_final` publishes the `Result` or `Error` to `IRIS_ANSWERS` and waits for the acknowledgement, then
sends it to the client's inbox and to the request's live subject (where a retry that joined listens);
only then may the caller delete the request from `IRIS_REQUESTS`. A store that fails even after a leader
election was waited out does not keep the answer from its client: it is sent all the same, and the failure
logged. `fetch_final` reads a stored final back by subject (a retry, a reconnect, `iris answers`).
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from runtime.stream_ops import Unavailable, while_unavailable
from schemas import headers as h
from schemas.answers import answer_headers, storable
from schemas.messages import Error, Result, encoder
from schemas.subjects import ANSWER_STREAM, answer_get_subject, answer_subject, live_subject

STORE_GIVE_UP_S = 30.0
_log = structlog.get_logger("iris.answers")


@dataclass(frozen=True)
class StoredFinal:
    """A final reply as stored: its kind (`Iris-Kind`: result or error) and its encoded body."""

    kind: str
    data: bytes
    subject: str = ""
    stored_at: str = ""  # Nats-Time-Stamp, RFC 3339


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
    js = nc.jetstream()
    subject = answer_subject(request_id, owner)
    headers = answer_headers(kind, request_id, owner)
    try:
        await while_unavailable(
            lambda: js.publish(subject, data, headers=headers, stream=ANSWER_STREAM, timeout=2.0), STORE_GIVE_UP_S
        )
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
