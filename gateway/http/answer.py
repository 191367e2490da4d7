"""One way to answer an HTTP generation call, whatever its API dialect.

A dialect (Ollama NDJSON, OpenAI SSE) is an `AnswerFormat`: how a text delta, a queue position, a
keep-alive, the end, and an error look on its stream, and what its whole non-streamed answer is.
`respond` reads the first events before it commits to a status, so everything refused at admission
(queue full, deadline unmeetable, no capacity, rate limited) or failing at once gets its real HTTP
status and `Retry-After`. A streamed request still waiting in the queue after `queue_commit_after_s`
commits to 200 and streams its position until the answer comes (`http_stream_feedback`); later failures
travel inside the stream. Non-streamed calls always keep their real status. A client that disconnects
at any point cancels its request.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import structlog
from starlette.requests import Request
from starlette.responses import Response

from gateway.config import GatewayConfig
from gateway.forwarding import AnswerEvent, Delta, Forwarder, final_result, until_disconnect
from gateway.http.io import AnswerStream, ApiFamily, ensure_error, error_response, json_response
from gateway.http.stream_feedback import EventPump, StreamFormat, stream_body
from gateway.identity import Identity, KeyRing
from gateway.metrics import GatewayMetrics
from gateway.model_cards import ModelCards
from gateway.model_directory import ModelDirectory
from runtime.clock import now_ms
from schemas.errors import Cancelled, IrisError
from schemas.messages import QueueUpdate, Result

Handler = Callable[[Request], Awaitable[Response]]
T = TypeVar("T")


class AnswerFormat(StreamFormat, Protocol):
    media_type: str

    def whole(self, result: Result) -> Any: ...


@dataclass
class HttpContext:
    config: GatewayConfig
    keys: KeyRing
    models: ModelDirectory
    forwarder: Forwarder
    metrics: GatewayMetrics
    log: structlog.stdlib.BoundLogger
    cards: ModelCards


def endpoint(ctx: HttpContext, family: ApiFamily, route: str) -> Callable[[Handler], Handler]:
    """Wrap a route: typed errors become the dialect's error response; nothing a client sends is a 500."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def run(request: Request) -> Response:
            try:
                response = await handler(request)
            except IrisError as exc:
                response = _refused(ctx, family, route, exc)
            except Exception as exc:
                ctx.log.exception("http handler failed", route=route)
                response = _refused(ctx, family, route, ensure_error(exc))
            code = response.headers.get("x-iris-error", "")
            ctx.metrics.requests.labels(family.value, route, str(response.status_code), code).inc()
            return response

        return run

    return wrap


def _refused(ctx: HttpContext, family: ApiFamily, route: str, exc: IrisError) -> Response:
    ctx.metrics.refusals.note(now_ms(), family.value, route, exc.http_status, exc.code.value, exc.message)
    return error_response(family, exc)


async def respond(
    ctx: HttpContext,
    request: Request,
    family: ApiFamily,
    events: AsyncGenerator[AnswerEvent, None],
    fmt: AnswerFormat,
    *,
    stream: bool,
    model: str,
    identity: Identity,
) -> Response:
    started_s = time.monotonic()
    labels = (family.value, model, identity.workload)
    ctx.metrics.in_flight.inc()
    pump = EventPump(events)
    head = await _head(ctx, request, family, pump, events, stream=stream)

    def first_text() -> None:
        ctx.metrics.first_token_s.labels(*labels).observe(time.monotonic() - started_s)

    def on_result(result: Result) -> None:
        ctx.metrics.tokens.labels(model, identity.workload).inc(result.usage.completion_tokens)

    last = head[-1] if head else None
    if not isinstance(last, QueueUpdate):
        head = [last] if last is not None else []  # started at once: its position says nothing
    if isinstance(last, Result):
        first_text()  # non-streaming, or an empty answer that came at once
        ctx.metrics.in_flight.dec()
        await pump.aclose()
        ctx.metrics.duration_s.labels(*labels).observe(time.monotonic() - started_s)
        on_result(last)
        return _streamed_whole(fmt, last) if stream else json_response(fmt.whole(last))

    async def body() -> AsyncGenerator[bytes, None]:
        try:
            keepalive_s = ctx.config.stream_keepalive_s
            async for part in stream_body(pump, head, fmt, keepalive_s, first_text, on_result):
                yield part
        finally:
            ctx.metrics.in_flight.dec()
            ctx.metrics.duration_s.labels(*labels).observe(time.monotonic() - started_s)
            await pump.aclose()

    def disconnected() -> None:
        ctx.metrics.disconnects.labels(family.value).inc()

    return AnswerStream(body(), fmt.media_type, disconnected)


async def _head(
    ctx: HttpContext,
    request: Request,
    family: ApiFamily,
    pump: EventPump,
    events: AsyncGenerator[AnswerEvent, None],
    *,
    stream: bool,
) -> list[AnswerEvent]:
    """What comes before the response commits: a stream's events up to its first text or the commit
    deadline, or the whole result; on any failure the slot's gauge and the pump are released."""
    try:
        if stream:
            return await _until_disconnect(ctx, request, family, pump.head(ctx.config.queue_commit_after_s))
        return [await _until_disconnect(ctx, request, family, final_result(events))]
    except BaseException:
        ctx.metrics.in_flight.dec()
        await pump.aclose()
        raise


async def _until_disconnect(ctx: HttpContext, request: Request, family: ApiFamily, work: Awaitable[T]) -> T:
    try:
        return await until_disconnect(request.receive, work)
    except Cancelled:
        ctx.metrics.disconnects.labels(family.value).inc()
        raise


def _streamed_whole(fmt: AnswerFormat, result: Result) -> Response:
    """A streamed answer whose result came at once (empty text): still the dialect's stream shape."""
    body = (fmt.delta(Delta(result.text, result.logprobs)) if result.text else b"") + fmt.end(result)
    return Response(body, 200, media_type=fmt.media_type)
