"""The client side of the wire contract: publish one request, read its replies until the final one.

Shared by the Python SDK (`iris.sdk.client`) and the gateway, which are both clients of the broker.
`RequestEnvelope` is what goes on the stream; `Exchange` runs it. Delivery is at-least-once: chunks of a
re-run arrive with a higher `attempt` (late chunks of an older attempt are dropped) and only the first
final reply counts, since the exchange unsubscribes on it.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import PubAck
from nats.js.errors import APIError, NoStreamResponseError, ServiceUnavailableError
from nats.nuid import NUID

from runtime.clock import now_ms
from runtime.connection import connection_owner
from runtime.stream_ops import PUBLISH_SLACK_BYTES, headers_bytes, while_unavailable
from schemas import headers as h
from schemas.errors import (
    DuplicateRequest,
    ErrorCode,
    InvalidRequest,
    IrisError,
    NoCapacity,
    PayloadTooLarge,
    QueueFull,
)
from schemas.messages import (
    Chunk,
    GenerateRequest,
    QueueUpdate,
    Result,
    chunk_decoder,
    encoder,
    error_decoder,
    queue_update_decoder,
    request_decoder,
    result_decoder,
)
from schemas.subjects import MAX_TOKEN_CHARS, cancel_subject, is_token, request_subject

REPLY_GRACE_S = 5.0
PUBLISH_GIVE_UP_S = 10.0
_NUID = NUID()


@dataclass(frozen=True)
class RequestEnvelope:
    model: str
    workload: str
    body: bytes
    headers: dict[str, str]
    deadline_ms: int
    owner: str | None = None  # the publishing NATS user's token (`connection_owner`): subject and cancels carry it

    @property
    def request_id(self) -> str:
        return self.headers[h.MSG_ID]


def build_envelope(
    nc: NATS,
    request: GenerateRequest,
    *,
    model: str,
    workload: str = "default",
    priority: int = 1,
    user: str | None = None,
    deadline_s: float = h.DEFAULT_DEADLINE_S,
    tokens: int | None = None,
    idempotency_key: str | None = None,
    end_user: str | None = None,
) -> RequestEnvelope:
    """Validate everything a client controls and build the message; raises `InvalidRequest` naming the field."""
    body = encoder.encode(request)
    try:
        request_decoder.decode(body)  # constructing a Struct does not check its bounds; decoding does
    except (msgspec.ValidationError, ValueError) as exc:
        raise InvalidRequest(f"invalid request: {exc}") from None
    labels = (("model", model), ("workload", workload), ("user", user), ("end_user", end_user))
    for name, value in (*labels, ("idempotency_key", idempotency_key)):
        if value is not None and not is_token(value):
            raise InvalidRequest(f"{name} must match [A-Za-z0-9_-]{{1,{MAX_TOKEN_CHARS}}}, got {value[:40]!r}")
    if not h.MIN_PRIORITY <= priority <= h.MAX_PRIORITY:
        raise InvalidRequest(f"priority must be in [{h.MIN_PRIORITY}, {h.MAX_PRIORITY}], got {priority}")
    if not 0 < deadline_s <= h.MAX_DEADLINE_S:
        raise InvalidRequest(f"deadline_s must be in (0, {h.MAX_DEADLINE_S:.0f}], got {deadline_s}")
    if tokens is not None and not 1 <= tokens <= h.MAX_COST_TOKENS:
        raise InvalidRequest(f"tokens must be in [1, {h.MAX_COST_TOKENS}], got {tokens}")
    now = now_ms()
    deadline_ms = now + int(deadline_s * 1000)
    headers = {
        h.REPLY_TO: reply_router(nc).new_inbox(),
        h.DEADLINE: str(deadline_ms),
        h.PRIORITY: str(priority),
        h.MSG_ID: idempotency_key or _NUID.next().decode(),
        h.MSG_TTL: h.ttl_header(deadline_ms, now),
    }
    if user:
        headers[h.USER] = user
    if end_user:
        headers[h.END_USER] = end_user
    if tokens:
        headers[h.TOKENS] = str(tokens)
    return RequestEnvelope(model, workload, body, headers, deadline_ms, connection_owner(nc))


class ReplyRouter:
    """Every exchange's replies on one wildcard subscription per connection (as nats-py muxes `request`):
    a request costs a dict entry instead of a SUB/UNSUB round and a reader task."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.prefix = nc.new_inbox()
        self._queues: dict[str, asyncio.Queue[Msg]] = {}
        self._subscribed: asyncio.Future[None] | None = None

    def new_inbox(self) -> str:
        return f"{self.prefix}.{_NUID.next().decode()}"

    async def listen(self, inbox: str) -> asyncio.Queue[Msg]:
        """A queue of the replies to `inbox`, from now until `release`."""
        failed = self._subscribed is not None and self._subscribed.done() and not _succeeded(self._subscribed)
        if self._subscribed is None or failed:
            self._subscribed = asyncio.ensure_future(self._subscribe())
        await asyncio.shield(self._subscribed)
        queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._queues[inbox] = queue  # before the request is published, so no reply can be missed
        return queue

    async def _subscribe(self) -> None:
        await self.nc.subscribe(f"{self.prefix}.*", cb=self._route)

    def release(self, inbox: str) -> None:
        self._queues.pop(inbox, None)

    async def _route(self, msg: Msg) -> None:
        queue = self._queues.get(msg.subject)
        if queue is not None:  # None: a late reply for an exchange that already ended
            queue.put_nowait(msg)


def _succeeded(future: asyncio.Future[None]) -> bool:
    return not future.cancelled() and future.exception() is None


_routers: weakref.WeakKeyDictionary[NATS, ReplyRouter] = weakref.WeakKeyDictionary()


def reply_router(nc: NATS) -> ReplyRouter:
    router = _routers.get(nc)
    if router is None:
        router = _routers[nc] = ReplyRouter(nc)
    return router


@dataclass
class Exchange:
    """One request in flight: iterate for chunks; `result` holds the final reply afterwards."""

    nc: NATS
    envelope: RequestEnvelope
    result: Result | None = None
    queue_updates: list[QueueUpdate] = field(default_factory=list)
    attempt: int = 0

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self._run()  # type: ignore[return-value]  # without queue updates: chunks only

    def with_queue_updates(self) -> AsyncIterator[Chunk | QueueUpdate]:
        """Chunks, and each `QueueUpdate` as it arrives (position and ETA while the request waits)."""
        return self._run(queue_updates=True)

    async def _run(self, queue_updates: bool = False) -> AsyncIterator[Chunk | QueueUpdate]:
        env = self.envelope
        router = reply_router(self.nc)
        replies = await router.listen(env.headers[h.REPLY_TO])
        published = answered = False
        try:
            await publish_request(self.nc, env)
            published = True
            while self.result is None:
                msg = await _next_reply(replies, env.deadline_ms)
                try:
                    chunk = self._handle(msg.headers or {}, msg.data)
                except IrisError:
                    answered = True  # the final reply was an error
                    raise
                if isinstance(chunk, Chunk) or (queue_updates and chunk is not None):
                    yield chunk
            answered = True
        finally:
            router.release(env.headers[h.REPLY_TO])
            if published and not answered and not self.nc.is_closed:
                await self.cancel()  # abandoned (break, task cancelled, timeout): free the slot

    async def cancel(self) -> None:
        """Ask Iris to drop this request: a queued one leaves at once, a running one stops within a token."""
        await self.nc.publish(cancel_subject(self.envelope.request_id, self.envelope.owner), b"")

    def _handle(self, headers: dict[str, str], data: bytes) -> Chunk | QueueUpdate | None:
        kind = headers.get(h.KIND)
        if kind == h.KIND_CHUNK:
            chunk = chunk_decoder.decode(data)
            if chunk.attempt < self.attempt:
                return None  # a late chunk from an attempt that was already replaced
            self.attempt = chunk.attempt
            return chunk
        if kind == h.KIND_RESULT:
            self.result = result_decoder.decode(data)
        elif kind == h.KIND_ERROR:
            error = error_decoder.decode(data)
            raise IrisError.from_wire(ErrorCode(error.code), error.message, error.retry_after_s)
        elif kind == h.KIND_QUEUED:
            update = queue_update_decoder.decode(data)
            self.queue_updates.append(update)
            return update
        return None

    async def finish(self) -> Result:
        """Run to the end and return the final `Result`."""
        async for _ in self:
            pass
        assert self.result is not None
        return self.result


async def _next_reply(replies: asyncio.Queue[Msg], deadline_ms: int) -> Msg:
    """The next reply; a burst of chunks is read without a timer per message."""
    try:
        return replies.get_nowait()
    except asyncio.QueueEmpty:
        pass
    timeout_s = (deadline_ms - now_ms()) / 1000 + REPLY_GRACE_S
    try:
        return await asyncio.wait_for(replies.get(), max(0.01, timeout_s))
    except TimeoutError:
        raise IrisError.from_wire(ErrorCode.DEADLINE_EXCEEDED, "no final reply before the deadline") from None


async def publish_request(nc: NATS, env: RequestEnvelope, give_up_s: float = PUBLISH_GIVE_UP_S) -> None:
    """Publish to JetStream; retries reuse the same `Nats-Msg-Id`, so they can never enqueue twice. A
    cluster electing a stream leader is waited out for up to `give_up_s`."""
    size = len(env.body) + headers_bytes(env.headers) + PUBLISH_SLACK_BYTES
    if size > nc.max_payload:  # the server would close the connection, and every answer on it with it
        raise PayloadTooLarge(
            f"request of {size} bytes with its headers is larger than the NATS max_payload of {nc.max_payload} bytes"
        )
    js = nc.jetstream()
    subject = request_subject(env.model, env.workload, env.owner)
    attempts = 0

    async def publish() -> PubAck:
        nonlocal attempts
        attempts += 1
        return await js.publish(subject, env.body, headers=env.headers, timeout=2.0)

    try:
        ack = await while_unavailable(publish, give_up_s)
    except NatsTimeout:
        raise NoCapacity("JetStream did not acknowledge the request", retry_after_s=1.0) from None
    except (NoStreamResponseError, ServiceUnavailableError):
        raise NoCapacity("no Iris request stream: is the broker running?", retry_after_s=1.0) from None
    except APIError as exc:
        raise QueueFull(f"request stream refused the request: {exc.description}", retry_after_s=1.0) from None
    if ack.duplicate and attempts == 1:  # a retry may find its own first try, which did get through
        raise DuplicateRequest(f"request id {env.request_id!r} was already submitted")
