"""NATS micro service `iris`: `iris.api.generate` and `iris.api.chat` for plain `nats req` users.

    nats req iris.api.generate '{"prompt": "Why is the sky blue?", "max_tokens": 64}'

Each call runs one request through the broker (same stream, same scheduling as every other client) and
answers with the final `Result` JSON, on a reply subject under `_INBOX.` only (a call naming any other
reply subject is ignored: the gateway's answer must not land on a subject of the caller's choosing). NATS
runs a subscription's callbacks one after another, so each call is served in its own task; at most
`max_in_flight` at once (the callback waits for a place, which holds back further deliveries instead of
queueing them without bound). Failures answer with the micro error headers (`Nats-Service-Error-Code` = the
HTTP status of the Iris error code) and an `Error` JSON body. Discoverable with `nats micro ls`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from gateway.forwarding import Forwarder, final_result
from gateway.identity import Identity
from schemas.errors import ErrorCode, InvalidRequest, IrisError
from schemas.messages import Error, Result, api_request_decoder, encoder
from schemas.reply_subjects import reply_problem
from schemas.subjects import API_PREFIX

SERVICE_NAME = "iris"
SERVICE_VERSION = "0.1.0"


class MicroApi:
    def __init__(self, nc: NATS, forwarder: Forwarder, log: structlog.stdlib.BoundLogger) -> None:
        self.nc, self.forwarder, self.log = nc, forwarder, log
        self._service: Service | None = None
        self._places = asyncio.Semaphore(forwarder.max_in_flight)
        self._serving: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._service = await add_service(
            self.nc, name=SERVICE_NAME, version=SERVICE_VERSION, description="Iris LLM request broker API"
        )
        group = self._service.add_group(name=API_PREFIX)
        await group.add_endpoint(name="generate", handler=self._concurrently(self._generate))
        await group.add_endpoint(name="chat", handler=self._concurrently(self._chat))

    async def stop(self) -> None:
        """No new calls; the calls in progress finish (the gateway stops its NATS connection after)."""
        if self._service is not None:
            await self._service.stop()
            self._service = None
        await asyncio.gather(*self._serving, return_exceptions=True)

    def _concurrently(
        self, handle: Callable[[Request], Coroutine[Any, Any, None]]
    ) -> Callable[[Request], Coroutine[Any, Any, None]]:
        async def spawn(req: Request) -> None:
            await self._places.acquire()
            task = asyncio.create_task(handle(req))
            self._serving.add(task)
            task.add_done_callback(self._served)

        return spawn

    def _served(self, task: asyncio.Task[None]) -> None:
        self._serving.discard(task)
        self._places.release()
        if not task.cancelled() and task.exception() is not None:
            self.log.error("api request failed", exc_info=task.exception())

    async def _generate(self, req: Request) -> None:
        await self._serve(req, chat=False)

    async def _chat(self, req: Request) -> None:
        await self._serve(req, chat=True)

    async def _serve(self, req: Request, *, chat: bool) -> None:
        reply_to = req._msg.reply  # micro's Request has no public accessor
        problem = reply_problem(reply_to, None)
        if problem is not None:  # our answer would land wherever the caller said, with our rights
            self.log.warning("api request ignored: its reply subject " + problem, reply_to=reply_to[:80])
            return
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

    async def _run(self, data: bytes, *, chat: bool) -> Result:
        try:
            api = api_request_decoder.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise InvalidRequest(f"invalid request: {exc}") from None
        if chat and api.messages is None:
            raise InvalidRequest("chat needs `messages` - at $.messages")
        if not chat and api.prompt is None:
            raise InvalidRequest("generate needs `prompt` - at $.prompt")
        identity = Identity(user=api.user, workload=api.workload, priority=api.priority, deadline_s=api.deadline_s)
        events = self.forwarder.open(api.generate_request(), api.model, identity, api.idempotency_key)
        return await final_result(events)  # a missing reply raises DeadlineExceeded itself


async def _respond_error(req: Request, exc: IrisError) -> None:
    body = encoder.encode(Error(code=exc.code.value, message=exc.message, retry_after_s=exc.retry_after_s))
    await req.respond_error(str(exc.http_status), exc.message, data=body)
