"""NATS micro service `iris`: `iris.api.generate` and `iris.api.chat` for plain `nats req` users.

    nats req iris.api.generate '{"prompt": "Why is the sky blue?", "max_tokens": 64}'

Each call runs one request through the broker (same stream, same scheduling as every other client) and
answers with the final `Result` JSON. Failures answer with the micro error headers (`Nats-Service-Error-Code`
= the HTTP status of the Iris error code) and an `Error` JSON body. Discoverable with `nats micro ls`.
"""

from __future__ import annotations

import asyncio
import time

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from gateway.config import GatewayConfig
from schemas.errors import ErrorCode, InvalidRequest, IrisError, NoCapacity
from schemas.exchange import Exchange, build_envelope
from schemas.messages import Error, api_request_decoder, encoder, heartbeat_decoder
from schemas.subjects import API_PREFIX, HEARTBEAT_FILTER

SERVICE_NAME = "iris"
SERVICE_VERSION = "0.1.0"
MODEL_FORGET_S = 10.0


class MicroApi:
    def __init__(self, nc: NATS, config: GatewayConfig, log: structlog.stdlib.BoundLogger) -> None:
        self.nc, self.config, self.log = nc, config, log
        self.models_seen: dict[str, float] = {}  # model → monotonic time of its last heartbeat
        self._slots = asyncio.Semaphore(config.max_in_flight)
        self._service: Service | None = None

    async def start(self) -> None:
        await self.nc.subscribe(HEARTBEAT_FILTER, cb=self._on_heartbeat)
        self._service = await add_service(
            self.nc, name=SERVICE_NAME, version=SERVICE_VERSION, description="Iris LLM request broker API"
        )
        group = self._service.add_group(name=API_PREFIX)
        await group.add_endpoint(name="generate", handler=self._generate)
        await group.add_endpoint(name="chat", handler=self._chat)

    async def stop(self) -> None:
        if self._service is not None:
            await self._service.stop()
            self._service = None

    async def _on_heartbeat(self, msg: object) -> None:
        try:
            beat = heartbeat_decoder.decode(msg.data)  # type: ignore[attr-defined]
        except msgspec.DecodeError:
            return
        self.models_seen[beat.model] = time.monotonic()

    def default_model(self) -> str:
        live = sorted(m for m, seen in self.models_seen.items() if time.monotonic() - seen < MODEL_FORGET_S)
        if not live:
            raise NoCapacity("no worker is serving any model", retry_after_s=1.0)
        if len(live) > 1:
            raise InvalidRequest(f'several models are served ({", ".join(live)}); set "model"')
        return live[0]

    async def _generate(self, req: Request) -> None:
        await self._serve(req, chat=False)

    async def _chat(self, req: Request) -> None:
        await self._serve(req, chat=True)

    async def _serve(self, req: Request, *, chat: bool) -> None:
        async with self._slots:
            try:
                result = await self._run(req.data, chat=chat)
            except IrisError as exc:
                await _respond_error(req, exc)
                return
            except Exception as exc:
                self.log.exception("api request failed")
                await _respond_error(req, IrisError.from_wire(ErrorCode.INTERNAL, f"internal error: {exc}"))
                return
            await req.respond(encoder.encode(result))

    async def _run(self, data: bytes, *, chat: bool) -> object:
        try:
            api = api_request_decoder.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise InvalidRequest(f"invalid request: {exc}") from None
        if chat and api.messages is None:
            raise InvalidRequest("chat needs `messages` - at $.messages")
        if not chat and api.prompt is None:
            raise InvalidRequest("generate needs `prompt` - at $.prompt")
        envelope = build_envelope(
            self.nc,
            api.generate_request(),
            model=api.model or self.default_model(),
            workload=api.workload,
            priority=api.priority,
            user=api.user,
            deadline_s=api.deadline_s,
            idempotency_key=api.idempotency_key,
        )
        return await Exchange(self.nc, envelope).finish()  # a missing reply raises DeadlineExceeded itself


async def _respond_error(req: Request, exc: IrisError) -> None:
    body = encoder.encode(Error(code=exc.code.value, message=exc.message, retry_after_s=exc.retry_after_s))
    await req.respond_error(str(exc.http_status), exc.message, data=body)
