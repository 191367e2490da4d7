"""The HTTP gateway: Starlette routes for the Ollama and OpenAI dialects, health, readiness, metrics and
the status page, served by uvicorn inside the gateway's own event loop.

Starlette + uvicorn: a small, well-kept ASGI stack with streaming responses and no framework magic in
the hot path; uvicorn with httptools parses HTTP in C. The gateway owns signals (`runtime.lifecycle`),
so uvicorn's own signal capture is switched off and `stop()` asks it to finish open responses first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Generator

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from gateway.config import LOOPBACK_HOSTS
from gateway.http.answer import HttpContext
from gateway.http.guard import HttpGuard, body_limit_bytes
from gateway.http.io import ERROR_HEADER, ApiFamily, error_body, json_response
from gateway.http.ollama import ollama_routes
from gateway.http.openai import openai_routes
from gateway.http.show import show_routes
from gateway.http.status.hub import StatusHub
from gateway.http.status.routes import status_routes
from schemas.errors import ErrorCode, IrisError

GRACEFUL_STOP_S = 30


def build_app(
    ctx: HttpContext,
    nats_connected: Callable[[], bool],
    broker_leader: Callable[[], Awaitable[str | None]] | None = None,
    status: StatusHub | None = None,
) -> Starlette:
    async def root(request: Request) -> Response:
        if status is not None and request.method == "GET" and "text/html" in request.headers.get("accept", ""):
            return RedirectResponse("/status", 307)  # a browser: the status page; API clients probe `/`
        return PlainTextResponse("Iris is running (Ollama- and OpenAI-compatible API; status page at /status)")

    async def healthz(request: Request) -> Response:
        return json_response({"status": "ok", "nats_connected": nats_connected()})

    async def readyz(request: Request) -> Response:
        live = list(ctx.models.live())
        if not nats_connected():
            return json_response({"ready": False, "reason": "not connected to NATS"}, 503)
        if not live:
            return json_response({"ready": False, "reason": "no worker is serving any model yet"}, 503)
        leader = await broker_leader() if broker_leader is not None else None
        if broker_leader is not None and leader is None:
            return json_response({"ready": False, "reason": "no broker leads: requests would not be scheduled"}, 503)
        return json_response({"ready": True, "models": live, "broker": leader})

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        family = ApiFamily.OPENAI if request.url.path.startswith("/v1/") else ApiFamily.OLLAMA
        message = f"{exc.detail}: {request.method} {request.url.path}"
        error = IrisError.from_wire(ErrorCode.INVALID_REQUEST, message)
        headers = {ERROR_HEADER: ErrorCode.INVALID_REQUEST.value, **(exc.headers or {})}
        return json_response(error_body(family, error), exc.status_code, headers)

    routes = [
        Route("/", root, methods=["GET", "HEAD"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *ollama_routes(ctx),
        *show_routes(ctx),
        *openai_routes(ctx),
        *(status_routes(ctx, status) if status is not None else []),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error}, middleware=guards(ctx))


def guards(ctx: HttpContext) -> list[Middleware]:
    """`HttpGuard` outermost, then CORS answers for the browser origins it let through."""
    config = ctx.config
    guard = Middleware(
        HttpGuard,
        keys=ctx.keys,
        metrics=ctx.metrics,
        max_body_bytes=body_limit_bytes(config.max_body_bytes, ctx.forwarder.nc.max_payload),
        check_hosts=config.http_host in LOOPBACK_HOSTS,
        allowed_hosts=config.allowed_hosts,
        allowed_origins=config.allowed_origins,
    )
    if not config.allowed_origins:
        return [guard]
    cors = Middleware(
        CORSMiddleware,
        allow_origins=config.allowed_origins,
        allow_methods=["GET", "POST", "HEAD"],
        allow_headers=["*"],
        expose_headers=[ERROR_HEADER, "Retry-After"],
    )
    return [guard, cors]


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the gateway's lifecycle owns SIGINT/SIGTERM


class HttpServer:
    def __init__(self, app: Starlette, host: str, port: int) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            loop="none",
            http="httptools",
            lifespan="off",
            access_log=False,
            log_level="warning",
            server_header=False,
            timeout_graceful_shutdown=GRACEFUL_STOP_S,
            backlog=4096,
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises why it could not start (port in use, …)
                raise OSError(f"HTTP server on {self.url} stopped during start")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        task, self._task = self._task, None
        await task
