"""Turn an identified API call into one Iris request and read its answer, bounded by `max_in_flight`.

Every edge (HTTP Ollama/OpenAI, the NATS micro service) ends here, so all of them publish the same
envelope and read replies the same way (`runtime.exchange`). `answer_events` yields the text deltas a
stream may forward (re-runs de-duplicated by `AnswerText`), queue updates when asked for, and then the
final `Result`. A call that reuses an idempotency key joins the first (`runtime.exchange`): it streams the
rest of that answer, or the whole stored one at once when it has ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from nats.aio.client import Client as NATS

from gateway.answer_text import AnswerText
from gateway.identity import Identity
from gateway.model_directory import ModelDirectory
from gateway.rate_limits import RateLimiter, Reservation, reservation_tokens, spent_tokens
from runtime.clock import now_ms
from runtime.exchange import Exchange, build_envelope
from schemas.errors import Cancelled, IrisError, QueueFull
from schemas.messages import GenerateRequest, QueueUpdate, Result, TokenLogprob

T = TypeVar("T")
Receive = Callable[[], Awaitable[Mapping[str, Any]]]


@dataclass(frozen=True)
class Delta:
    """Answer text a stream may forward, with its tokens' logprobs when the request asked for them."""

    text: str
    logprobs: list[TokenLogprob] | None = None


AnswerEvent = Delta | QueueUpdate | Result


class Forwarder:
    def __init__(self, nc: NATS, models: ModelDirectory, max_in_flight: int) -> None:
        self.nc, self.models = nc, models
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.limiter = RateLimiter()

    def open(
        self,
        request: GenerateRequest,
        model: str | None,
        identity: Identity,
        idempotency_key: str | None = None,
        *,
        queue_updates: bool = False,
    ) -> AsyncGenerator[AnswerEvent, None]:
        """Validate and route one request; iterating the result publishes it and reads its answer
        (with `queue_updates`, each `QueueUpdate` too, while it waits)."""
        if self.in_flight >= self.max_in_flight:
            raise QueueFull(f"the gateway has {self.in_flight} requests in flight (max_in_flight)", retry_after_s=1.0)
        envelope = build_envelope(
            self.nc,
            request,
            model=self.models.resolve(model),
            workload=identity.workload,
            priority=identity.priority,
            user=identity.user,
            end_user=identity.end_user,
            deadline_s=identity.deadline_s,
            idempotency_key=idempotency_key,
        )
        reservation = None
        if not identity.rate.unlimited:
            reserve, prompt = reservation_tokens(len(envelope.body), request.max_tokens)
            reservation = self.limiter.admit(identity.limit_key, identity.rate, now_ms(), reserve)
            reservation.prompt_tokens = prompt
        return self._answer_events(Exchange(self.nc, envelope), reservation, request.stream, queue_updates)

    async def _answer_events(
        self, exchange: Exchange, reservation: Reservation | None, streaming: bool, queue_updates: bool
    ) -> AsyncGenerator[AnswerEvent, None]:
        """Text deltas safe to forward, then the final `Result`; an `IrisError` ends it early. Closing it
        before the end cancels the request (its slot is freed). However it ends, its token reservation is
        settled to what it cost."""
        self.in_flight += 1
        text = AnswerText()
        chunks = exchange.with_queue_updates() if queue_updates else exchange.__aiter__()
        streamed, error = 0, None
        try:
            async for chunk in chunks:
                if isinstance(chunk, QueueUpdate):
                    yield chunk
                    continue
                streamed += 1
                delta = text.feed(chunk)
                if delta:  # a re-run catching up forwards part of a chunk: its logprobs no longer line up
                    yield Delta(delta, chunk.logprobs if delta == chunk.text else None)
            assert exchange.result is not None
            # A retry that joined mid-answer streamed only the rest: its text cannot line up with the whole.
            joined_late = exchange.joined and bool(text.sent)
            tail = "" if joined_late else text.finish(exchange.result.text)
            if tail:
                yield Delta(tail)
            yield exchange.result
        except IrisError as exc:
            error = exc.code
            raise
        finally:
            self.in_flight -= 1
            if reservation is not None:
                spent = spent_tokens(reservation, exchange.result, error, streamed, streaming)
                self.limiter.settle(reservation, spent, now_ms())
            await chunks.aclose()  # type: ignore[attr-defined]


async def final_result(events: AsyncGenerator[AnswerEvent, None]) -> Result:
    """Read an answer to its end; the `Result` is always the last event."""
    try:
        async for event in events:
            if isinstance(event, Result):
                return event
        raise AssertionError("an answer always ends with a Result or an IrisError")
    finally:
        await events.aclose()


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the HTTP client goes away first (its request is then cancelled)."""
    current = asyncio.current_task()
    assert current is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        await _disconnected(receive)
        gone = True
        current.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise
        current.uncancel()
        raise Cancelled("the client disconnected") from None
    finally:
        watcher.cancel()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
