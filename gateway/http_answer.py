"""One way to answer an HTTP generation call, whatever its API dialect.

A dialect (Ollama NDJSON, OpenAI SSE) is an `AnswerFormat`: how a text delta, the end, and an error look
on its stream, and what its whole non-streamed answer is. `respond` waits for the first event before it
commits to a status, so everything that fails before any text (queue full, deadline unmeetable, no
capacity, deadline exceeded in the queue) gets its real HTTP status and `Retry-After`; only failures after
text was sent travel inside the stream. A client that disconnects at any point cancels its request.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from starlette.requests import Request
from starlette.responses import Response

from gateway.config import GatewayConfig
from gateway.forwarding import Forwarder, final_result, until_disconnect
from gateway.http_io import AnswerStream, ApiFamily, ensure_error, error_response, json_response
from gateway.identity import Identity, KeyRing
from gateway.metrics import GatewayMetrics
from gateway.model_directory import ModelDirectory
from schemas.errors import Cancelled, IrisError
from schemas.messages import Result

Handler = Callable[[Request], Awaitable[Response]]


class AnswerFormat(Protocol):
    media_type: str

    def delta(self, text: str) -> bytes: ...

    def end(self, result: Result) -> bytes: ...

    def stream_error(self, exc: IrisError) -> bytes: ...

    def whole(self, result: Result) -> Any: ...


@dataclass
class HttpContext:
    config: GatewayConfig
    keys: KeyRing
    models: ModelDirectory
    forwarder: Forwarder
    metrics: GatewayMetrics
    log: structlog.stdlib.BoundLogger


def endpoint(ctx: HttpContext, family: ApiFamily, route: str) -> Callable[[Handler], Handler]:
    """Wrap a route: typed errors become the dialect's error response; nothing a client sends is a 500."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def run(request: Request) -> Response:
            try:
                response = await handler(request)
            except IrisError as exc:
                response = error_response(family, exc)
            except Exception as exc:
                ctx.log.exception("http handler failed", route=route)
                response = error_response(family, ensure_error(exc))
            code = response.headers.get("x-iris-error", "")
            ctx.metrics.requests.labels(family.value, route, str(response.status_code), code).inc()
            return response

        return run

    return wrap


async def respond(
    ctx: HttpContext,
    request: Request,
    family: ApiFamily,
    events: AsyncGenerator[str | Result, None],
    fmt: AnswerFormat,
    *,
    stream: bool,
    model: str,
    identity: Identity,
) -> Response:
    started_s = time.monotonic()
    labels = (family.value, model, identity.workload)
    ctx.metrics.in_flight.inc()
    try:
        first = await _until_disconnect(ctx, request, family, anext(events) if stream else final_result(events))
    except BaseException:
        ctx.metrics.in_flight.dec()
        raise
    ctx.metrics.first_token_s.labels(*labels).observe(time.monotonic() - started_s)
    if isinstance(first, Result):  # non-streaming, or an empty answer
        ctx.metrics.in_flight.dec()
        await events.aclose()
        ctx.metrics.duration_s.labels(*labels).observe(time.monotonic() - started_s)
        ctx.metrics.tokens.labels(model, identity.workload).inc(first.usage.completion_tokens)
        return _streamed_whole(fmt, first) if stream else json_response(fmt.whole(first))

    async def body() -> AsyncGenerator[bytes, None]:
        try:
            yield fmt.delta(first)
            async for event in events:
                if isinstance(event, Result):
                    ctx.metrics.tokens.labels(model, identity.workload).inc(event.usage.completion_tokens)
                    yield fmt.end(event)
                else:
                    yield fmt.delta(event)
        except IrisError as exc:
            yield fmt.stream_error(exc)
        finally:
            ctx.metrics.in_flight.dec()
            ctx.metrics.duration_s.labels(*labels).observe(time.monotonic() - started_s)
            await events.aclose()

    def disconnected() -> None:
        ctx.metrics.disconnects.labels(family.value).inc()

    return AnswerStream(body(), fmt.media_type, disconnected)


async def _until_disconnect(
    ctx: HttpContext, request: Request, family: ApiFamily, work: Awaitable[str | Result]
) -> str | Result:
    try:
        return await until_disconnect(request.receive, work)
    except Cancelled:
        ctx.metrics.disconnects.labels(family.value).inc()
        raise


def _streamed_whole(fmt: AnswerFormat, result: Result) -> Response:
    """A streamed answer whose result came at once (empty text): still the dialect's stream shape."""
    body = (fmt.delta(result.text) if result.text else b"") + fmt.end(result)
    return Response(body, 200, media_type=fmt.media_type)
