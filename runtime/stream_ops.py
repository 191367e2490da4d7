"""The few raw JetStream calls every part makes on the request stream, and typed reply publishing.

nats-py's `js.delete_msg` erases bytes (5.7 ms here) and its direct get is twice the raw API's cost, so
these call the JetStream API subjects themselves. Replies are published through `publish_reply` (and the
final one through `runtime.answers.send_final`) only, so every reply carries `Iris-Kind` and `Iris-Request-Id`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

from schemas import headers as h
from schemas.answers import storable
from schemas.errors import ErrorCode
from schemas.messages import Chunk, Error, QueueUpdate, StoredRequest, Ticket, encoder
from schemas.subjects import JS_DIRECT_GET, JS_MSG_DELETE, JS_MSG_GET, live_subject

T = TypeVar("T")
UNAVAILABLE_GIVE_UP_S = 60.0
PUBLISH_SLACK_BYTES = 128  # headers a JetStream publish may add (Nats-Expected-Stream)

_KIND_OF: dict[type, str] = {
    QueueUpdate: h.KIND_QUEUED,
    Chunk: h.KIND_CHUNK,
    Ticket: h.KIND_TICKET,
}


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _DeleteResponse(msgspec.Struct):
    success: bool = False
    error: _ApiError | None = None


class _MsgGetResponse(msgspec.Struct):
    error: _ApiError | None = None


_delete_decoder = msgspec.json.Decoder(_DeleteResponse)
_msg_get_decoder = msgspec.json.Decoder(_MsgGetResponse)
NO_MESSAGE_FOUND = 10037  # JetStream's err_code for a sequence the stream does not hold


async def get_request(nc: NATS, stream_seq: int, timeout_s: float = 2.0) -> StoredRequest | None:
    """Direct-get one request by sequence; None when it is no longer in the stream. Any replica serves
    direct gets, and one that has not stored the newest requests yet answers 404 for them: a 404 counts
    only once the stream's leader confirms it, else the direct get is tried again."""

    async def attempt() -> Msg:
        reply = await nc.request(JS_DIRECT_GET, b'{"seq":%d}' % stream_seq, timeout=timeout_s)
        status = (reply.headers or {}).get("Status")
        if status is not None and status != "404":
            raise Unavailable(f"direct get answered status {status}")
        if status == "404" and await _leader_holds(nc, stream_seq, timeout_s):
            raise Unavailable(f"a replica without request {stream_seq} answered its direct get")
        return reply

    reply = await while_unavailable(attempt)
    headers = reply.headers or {}
    if headers.get("Status") is not None:
        return None
    stamp = headers.get(h.NATS_TIMESTAMP, "")
    stored_ms = int(datetime.fromisoformat(stamp[:26].rstrip("Z") + "+00:00").timestamp() * 1000) if stamp else 0
    return StoredRequest(stream_seq, headers.get(h.NATS_SUBJECT, ""), dict(headers), reply.data, stored_ms)


async def _leader_holds(nc: NATS, stream_seq: int, timeout_s: float) -> bool:
    reply = await nc.request(JS_MSG_GET, b'{"seq":%d}' % stream_seq, timeout=timeout_s)
    answer = _msg_get_decoder.decode(reply.data)
    if answer.error is None:
        return True
    if answer.error.err_code == NO_MESSAGE_FOUND:
        return False
    raise Unavailable(answer.error.description)


async def delete_request(nc: NATS, stream_seq: int, timeout_s: float = 2.0) -> bool:
    """Remove a request from the stream without erasing bytes; False when it was already gone. Retried
    while JetStream is unavailable: a request whose final reply was sent must leave, or it runs again."""

    async def attempt() -> bool:
        reply = await nc.request(JS_MSG_DELETE, b'{"seq":%d,"no_erase":true}' % stream_seq, timeout=timeout_s)
        answer = _delete_decoder.decode(reply.data)
        if answer.error is not None and answer.error.code == 503:  # 500 "stream store EOF" = already gone
            raise Unavailable(answer.error.description)
        return answer.success

    return await while_unavailable(attempt)


class Unavailable(Exception):
    """JetStream answered, but cannot serve the call right now (a stream leader is being elected)."""


async def while_unavailable(call: Callable[[], Awaitable[T]], give_up_s: float = UNAVAILABLE_GIVE_UP_S) -> T:
    """Retry a stream call through a leader election (seconds on a cluster), then give up with its error."""
    deadline = time.monotonic() + give_up_s
    pause_s = 0.1
    while True:
        try:
            return await call()
        except (NatsTimeout, NoRespondersError, NoStreamResponseError, ServiceUnavailableError, Unavailable):
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(pause_s)
        pause_s = min(1.0, pause_s * 2)


async def publish_reply(
    nc: NATS,
    reply_to: str,
    request_id: str,
    message: QueueUpdate | Chunk | Ticket,
    *,
    owner: str | None,
    live: bool = True,
) -> None:
    """A reply before the final one; the final goes through `runtime.answers.send_final`, which stores it.
    Updates and chunks go to the request's live subject too (`owner`'s; not when `live` is False), for a
    retry that joined it (core NATS: a publish nobody listens to costs the server nothing)."""
    headers = {h.KIND: _KIND_OF[type(message)], h.REQUEST_ID: request_id}
    data = encoder.encode(message)
    await nc.publish(reply_to, data, headers=headers)
    if live and not isinstance(message, Ticket) and storable(request_id, owner):
        await nc.publish(live_subject(request_id, owner), data, headers=headers)


def headers_bytes(headers: dict[str, str]) -> int:
    """Bytes of a header block on the wire (`NATS/1.0`, each `key: value`): the server counts them toward
    `max_payload` with the body, while nats-py checks the body alone."""
    return len("NATS/1.0\r\n\r\n") + sum(len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items())


def error_reply(code: ErrorCode, message: str, retry_after_s: float | None = None) -> Error:
    return Error(code=code.value, message=message, retry_after_s=retry_after_s)
