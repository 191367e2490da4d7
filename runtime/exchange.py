"""The client side of the wire contract: publish one request, read its replies until the final one.

Shared by the Python SDK (`iris.sdk.client`) and the gateway, which are both clients of the broker.
`RequestEnvelope` is what goes on the stream; `Exchange` runs it. Delivery is at-least-once: chunks of a
re-run arrive with a higher `attempt` (late chunks of an older attempt are dropped) and only the first
final reply counts, since the exchange unsubscribes on it. A re-run that continues the earlier attempt's
stored progress (`runtime.progress`) marks its chunks `continued`: the indexes already yielded are dropped
and the reader sees one answer.

Answers are durable (`schemas.answers`): a request whose idempotency key was used already *joins* that
request (`Exchange.joined`): it reads the rest of its replies on its live subject, or its stored final at
once when it has ended. And a connection that was down for a moment reads the stored finals of its open
exchanges when it is back, so a final sent meanwhile is not waited for until the deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import PubAck
from nats.js.errors import APIError, NoStreamResponseError, ServiceUnavailableError
from nats.nuid import NUID

from runtime.answers import fetch_final
from runtime.clock import now_ms
from runtime.connection import connection_owner, per_connection
from runtime.stream_ops import PUBLISH_SLACK_BYTES, headers_bytes, while_unavailable
from schemas import headers as h
from schemas.errors import (
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
from schemas.subjects import MAX_TOKEN_CHARS, cancel_subject, is_token, live_subject, request_subject

REPLY_GRACE_S = 5.0
PUBLISH_GIVE_UP_S = 10.0
RECOVER_PAUSES_S = (0.0, 1.0)  # after a reconnect: read the stored finals now, and once more a moment later
_NUID = NUID()
_log = structlog.get_logger("iris.exchange")


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
        return h.request_id_of(self.headers[h.MSG_ID], self.owner)


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
    owner = connection_owner(nc)
    headers = {
        h.REPLY_TO: reply_router(nc).new_inbox(),
        h.DEADLINE: str(deadline_ms),
        h.PRIORITY: str(priority),
        h.MSG_ID: h.scoped_msg_id(idempotency_key or _NUID.next().decode(), owner),  # a key is its owner's
        h.MSG_TTL: h.ttl_header(deadline_ms, now),
    }
    if user:
        headers[h.USER] = user
    if end_user:
        headers[h.END_USER] = end_user
    if tokens:
        headers[h.TOKENS] = str(tokens)
    return RequestEnvelope(model, workload, body, headers, deadline_ms, owner)


class ReplyRouter:
    """Every exchange's replies on one wildcard subscription per connection (as nats-py muxes `request`):
    a request costs a dict entry instead of a SUB/UNSUB round and a reader task. A retry that joined a
    request already under way subscribes to that request's live subject as well. After a reconnect, every
    open exchange looks up its stored final: one sent while the connection was down is read from there."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.prefix = nc.new_inbox()
        self._open: dict[str, _Open] = {}
        self._subscribed: asyncio.Future[None] | None = None
        self._recovering: set[asyncio.Task[None]] = set()
        chained = nc._reconnected_cb  # nats-py keeps one callback; ours runs after the application's

        async def reconnected() -> None:
            if chained is not None:
                await chained()
            self._recover_soon()

        nc._reconnected_cb = reconnected

    def new_inbox(self) -> str:
        return f"{self.prefix}.{_NUID.next().decode()}"

    async def listen(self, inbox: str, request_id: str, owner: str | None) -> asyncio.Queue[Reply]:
        """A queue of the replies to `inbox`, from now until `release`."""
        failed = self._subscribed is not None and self._subscribed.done() and not _succeeded(self._subscribed)
        if self._subscribed is None or failed:
            self._subscribed = asyncio.ensure_future(self._subscribe())
        await asyncio.shield(self._subscribed)
        entry = _Open(request_id, owner)
        self._open[inbox] = entry  # before the request is published, so no reply can be missed
        return entry.replies

    async def join(self, inbox: str) -> None:
        """Also read the live subject of the open request on `inbox` (a retry of one already sent), then
        its stored final, in that order: a final is either stored already or not yet published live."""
        entry = self._open[inbox]

        async def route(msg: Msg) -> None:
            entry.replies.put_nowait((msg.headers or {}, msg.data))

        entry.live = await self.nc.subscribe(live_subject(entry.request_id, entry.owner), cb=route)
        await self.nc.flush()  # the server has the interest before the store is read
        await self._look_up(entry)

    async def _subscribe(self) -> None:
        await self.nc.subscribe(f"{self.prefix}.*", cb=self._route)

    async def release(self, inbox: str) -> None:
        entry = self._open.pop(inbox, None)
        if entry is not None and entry.live is not None and not self.nc.is_closed:
            await entry.live.unsubscribe()

    async def _route(self, msg: Msg) -> None:
        entry = self._open.get(msg.subject)
        if entry is not None:  # None: a late reply for an exchange that already ended
            entry.replies.put_nowait((msg.headers or {}, msg.data))

    async def _look_up(self, entry: _Open) -> None:
        final = await fetch_final(self.nc, entry.request_id, entry.owner)
        if final is not None:
            entry.replies.put_nowait(({h.KIND: final.kind, h.REQUEST_ID: entry.request_id}, final.data))

    def _recover_soon(self) -> None:
        task = asyncio.ensure_future(self._recover())
        self._recovering.add(task)
        task.add_done_callback(self._recovering.discard)

    async def _recover(self) -> None:
        """Finals sent while the connection was down are in the store. Read again a moment later: on a
        cluster, the other nodes learn of our re-sent subscription a little after we are back."""
        for pause_s in RECOVER_PAUSES_S:
            await asyncio.sleep(pause_s)
            for entry in list(self._open.values()):
                try:
                    await self._look_up(entry)
                except Exception as exc:  # the next reconnect, or the deadline, ends this one
                    _log.warning("stored final not read after a reconnect", request_id=entry.request_id, error=str(exc))


Reply = tuple[dict[str, str], bytes]  # headers and body of one reply


@dataclass
class _Open:
    request_id: str
    owner: str | None
    replies: asyncio.Queue[Reply] = field(default_factory=asyncio.Queue)
    live: Subscription | None = None


def _succeeded(future: asyncio.Future[None]) -> bool:
    return not future.cancelled() and future.exception() is None


reply_router = per_connection(ReplyRouter)


@dataclass
class Exchange:
    """One request in flight: iterate for chunks; `result` holds the final reply afterwards."""

    nc: NATS
    envelope: RequestEnvelope
    result: Result | None = None
    queue_updates: list[QueueUpdate] = field(default_factory=list)
    attempt: int = 0
    next_index: int = 0  # the chunk index the reader has not had yet
    joined: bool = False  # its idempotency key was already used: it follows that request's replies

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self._run()  # type: ignore[return-value]  # without queue updates: chunks only

    def with_queue_updates(self) -> AsyncIterator[Chunk | QueueUpdate]:
        """Chunks, and each `QueueUpdate` as it arrives (position and ETA while the request waits)."""
        return self._run(queue_updates=True)

    async def _run(self, queue_updates: bool = False) -> AsyncIterator[Chunk | QueueUpdate]:
        env = self.envelope
        router = reply_router(self.nc)
        inbox = env.headers[h.REPLY_TO]
        replies = await router.listen(inbox, env.request_id, env.owner)
        published = answered = False
        try:
            if await publish_request(self.nc, env):
                self.joined = True  # the key was seen: follow that request instead (its rest, or its final)
                await router.join(inbox)
            published = True
            while self.result is None:
                headers, data = await _next_reply(replies, env.deadline_ms)
                try:
                    chunk = self._handle(headers, data)
                except IrisError:
                    answered = True  # the final reply was an error
                    raise
                if isinstance(chunk, Chunk) or (queue_updates and chunk is not None):
                    yield chunk
            answered = True
        finally:
            await router.release(inbox)
            if published and not answered and not self.nc.is_closed:
                await self.cancel()  # abandoned (break, task cancelled, timeout): free the slot

    async def cancel(self) -> None:
        """Ask Iris to drop this request: a queued one leaves at once, a running one stops within a token."""
        await self.nc.publish(cancel_subject(self.envelope.request_id, self.envelope.owner), b"")

    def _handle(self, headers: dict[str, str], data: bytes) -> Chunk | QueueUpdate | None:
        kind = headers.get(h.KIND)
        if kind == h.KIND_CHUNK:
            return self._chunk(chunk_decoder.decode(data))
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

    def _chunk(self, chunk: Chunk) -> Chunk | None:
        """A re-run that continues (`Chunk.continued`) sends the chunks it took over again: the indexes this
        exchange yielded already are dropped, so its reader sees one answer, no restart. A re-run that
        starts over yields from index 0 with its higher `attempt`: its reader restarts."""
        if chunk.attempt < self.attempt:
            return None  # a late chunk from an attempt that was already replaced
        if chunk.attempt > self.attempt:
            self.attempt = chunk.attempt
            if not chunk.continued:
                self.next_index = 0
        if chunk.continued and chunk.index < self.next_index:
            return None
        self.next_index = chunk.index + 1
        return chunk

    async def finish(self) -> Result:
        """Run to the end and return the final `Result`."""
        async for _ in self:
            pass
        assert self.result is not None
        return self.result


async def _next_reply(replies: asyncio.Queue[Reply], deadline_ms: int) -> Reply:
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


async def publish_request(nc: NATS, env: RequestEnvelope, give_up_s: float = PUBLISH_GIVE_UP_S) -> bool:
    """Publish to JetStream; retries reuse the same `Nats-Msg-Id`, so they can never enqueue twice. A
    cluster electing a stream leader is waited out for up to `give_up_s`. True when the key had been used
    already (inside the dedupe window): nothing new was enqueued."""
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
    return bool(ack.duplicate) and attempts == 1  # a retry may find its own first try, which did get through
