"""The Python client: publish a request to JetStream and read its replies from a private inbox.

    async with await Client.connect("nats://127.0.0.1:4222") as client:
        async for chunk in client.generate("Why is the sky blue?"):
            print(chunk.text, end="")
        result = await client.complete("Hello", priority=5, user="alice")

Delivery is at-least-once: when a worker dies mid-answer the broker re-runs the request and chunks
arrive again with a higher `attempt`. `generate` yields every chunk (a reader that sees `attempt` grow
restarts its answer); `complete` does that for you. Only the first final reply counts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import APIError, NoStreamResponseError
from nats.nuid import NUID

from schemas import headers as h
from schemas.errors import ErrorCode, InvalidRequest, IrisError, NoCapacity, QueueFull
from schemas.messages import (
    ChatMessage,
    Chunk,
    GenerateRequest,
    QueueUpdate,
    Result,
    chunk_decoder,
    encoder,
    error_decoder,
    heartbeat_decoder,
    queue_update_decoder,
    request_decoder,
    result_decoder,
)
from schemas.subjects import HEARTBEAT_FILTER, is_token, request_subject, to_token

REPLY_GRACE_S = 5.0
PUBLISH_ATTEMPTS = 3
_NUID = NUID()


class DuplicateRequest(InvalidRequest):
    """The idempotency key was already used inside the stream's dedupe window: it will not run again."""


class Generation:
    """One submitted request: iterate it for chunks; `result` holds the final reply afterwards."""

    def __init__(
        self, client: Client, model: str | None, workload: str, body: bytes, headers: dict[str, str], deadline_ms: int
    ) -> None:
        self._client = client
        self._model, self._workload = model, workload
        self._body, self._headers = body, headers
        self.request_id = headers[h.MSG_ID]
        self.deadline_ms = deadline_ms
        self.result: Result | None = None
        self.queue_updates: list[QueueUpdate] = []
        self.attempt = 0

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self._run()

    async def _run(self) -> AsyncIterator[Chunk]:
        subject = request_subject(await self._client._resolve_model(self._model), self._workload)
        sub = await self._client.nc.subscribe(self._headers[h.REPLY_TO])
        try:
            await self._client._publish(subject, self._body, self._headers)
            while self.result is None:
                timeout_s = (self.deadline_ms - _now_ms()) / 1000 + REPLY_GRACE_S
                try:
                    msg = await sub.next_msg(timeout=max(0.01, timeout_s))
                except NatsTimeout:
                    raise IrisError.from_wire(ErrorCode.DEADLINE_EXCEEDED, "no final reply before the deadline") from None
                chunk = self._handle(msg.headers or {}, msg.data)
                if chunk is not None:
                    yield chunk
        finally:
            await sub.unsubscribe()

    def _handle(self, headers: dict[str, str], data: bytes) -> Chunk | None:
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
            self.queue_updates.append(queue_update_decoder.decode(data))
        return None


class Client:
    def __init__(self, nc: NATS, *, owns_connection: bool = False) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self._owns = owns_connection
        self._default_model: str | None = None

    @classmethod
    async def connect(cls, url: str = "nats://127.0.0.1:4222", **options: Any) -> Client:
        return cls(await nats.connect(url, **options), owns_connection=True)

    async def close(self) -> None:
        if self._owns and not self.nc.is_closed:
            await self.nc.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def models(self, wait_s: float = 3.0, listen_s: float = 1.2) -> list[str]:
        """Models with a live worker: heartbeats heard for `listen_s` after the first (within `wait_s`)."""
        seen: set[str] = set()
        sub = await self.nc.subscribe(HEARTBEAT_FILTER)
        try:
            end = time.monotonic() + wait_s
            while (left := end - time.monotonic()) > 0:
                try:
                    msg = await sub.next_msg(timeout=left)
                except NatsTimeout:
                    break
                if not seen:
                    end = min(end, time.monotonic() + listen_s)  # a full beat interval hears every worker
                seen.add(heartbeat_decoder.decode(msg.data).model)
        finally:
            await sub.unsubscribe()
        return sorted(seen)

    async def _resolve_model(self, model: str | None) -> str:
        if model:
            return to_token(model)
        if self._default_model is None:
            models = await self.models()
            if not models:
                raise NoCapacity("no worker is serving any model", retry_after_s=1.0)
            if len(models) > 1:
                raise InvalidRequest(f"several models are served ({', '.join(models)}); pass model=...")
            self._default_model = models[0]
        return self._default_model

    def generate(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[ChatMessage | dict[str, str]] | None = None,
        model: str | None = None,
        workload: str = "default",
        priority: int = 1,
        user: str | None = None,
        deadline_s: float = h.DEFAULT_DEADLINE_S,
        tokens: int | None = None,
        idempotency_key: str | None = None,
        max_tokens: int = 256,
        temperature: float = 0.8,
        top_p: float = 0.95,
        stop: Sequence[str] = (),
        seed: int | None = None,
        stream: bool = True,
    ) -> Generation:
        chat = None if messages is None else [m if isinstance(m, ChatMessage) else ChatMessage(**m) for m in messages]
        request = GenerateRequest(
            prompt=prompt, messages=chat, max_tokens=max_tokens, temperature=temperature,
            top_p=top_p, stop=list(stop), seed=seed, stream=stream,
        )
        body = encoder.encode(request)
        try:
            request_decoder.decode(body)  # constructing a Struct does not check bounds; decoding does
        except (msgspec.ValidationError, ValueError) as exc:
            raise InvalidRequest(f"invalid request: {exc}") from None
        if idempotency_key is not None and not is_token(idempotency_key):
            raise InvalidRequest("idempotency_key must match [A-Za-z0-9_-]{1,128}")
        if not 0 < deadline_s <= h.MAX_DEADLINE_S:
            raise InvalidRequest(f"deadline_s must be in (0, {h.MAX_DEADLINE_S:.0f}]")
        now = _now_ms()
        deadline_ms = now + int(deadline_s * 1000)
        headers = {
            h.REPLY_TO: self.nc.new_inbox(),
            h.DEADLINE: str(deadline_ms),
            h.PRIORITY: str(priority),
            h.MSG_ID: idempotency_key or _NUID.next().decode(),
            h.MSG_TTL: h.ttl_header(deadline_ms, now),
        }
        if user:
            headers[h.USER] = to_token(user)
        if tokens:
            headers[h.TOKENS] = str(tokens)
        return Generation(self, model, to_token(workload), body, headers, deadline_ms)

    async def complete(self, prompt: str | None = None, **options: Any) -> Result:
        """Run a request to its end and return the final `Result` (restarts are handled)."""
        generation = self.generate(prompt, **options)
        async for _ in generation:
            pass
        assert generation.result is not None
        return generation.result

    async def _publish(self, subject: str, body: bytes, headers: dict[str, str]) -> None:
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            try:
                ack = await self.js.publish(subject, body, headers=headers, timeout=2.0)
            except NatsTimeout:
                if attempt == PUBLISH_ATTEMPTS:
                    raise NoCapacity("JetStream did not acknowledge the request", retry_after_s=1.0) from None
                continue  # same Nats-Msg-Id: a retry can never enqueue the request twice
            except NoStreamResponseError:
                raise NoCapacity("no Iris stream: is the broker running?", retry_after_s=1.0) from None
            except APIError as exc:
                raise QueueFull(f"request stream refused the request: {exc.description}", retry_after_s=1.0) from None
            if ack.duplicate and attempt == 1:
                raise DuplicateRequest(f"request id {headers[h.MSG_ID]!r} was already submitted")
            return


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
