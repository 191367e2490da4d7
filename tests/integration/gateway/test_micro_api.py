"""The gateway's NATS micro service: `iris.api.generate` / `iris.api.chat` for plain `nats req` users."""

from __future__ import annotations

import asyncio
import json

from nats.aio.client import Client as NATS

from gateway.config import GatewayConfig
from gateway.service import GatewayService
from gpu_worker.engines.fake import FakeEngine
from iris.launch.nats_server import NatsServer
from tests.integration.services import broker, eventually, worker


async def test_generate_chat_errors_and_discovery(nats_server: NatsServer, nc: NATS) -> None:
    async with broker(nats_server.url), worker(nats_server.url, FakeEngine("fake"), "w1"):
        api = GatewayService(GatewayConfig(nats_url=nats_server.url, http_port=0))
        await api.start()

        async def model_known() -> bool:
            return bool(api.models.live())

        await eventually(model_known, what="a worker heartbeat")
        reply = await nc.request("iris.api.generate", b'{"prompt": "hello", "max_tokens": 3}', timeout=10)
        result = json.loads(reply.data)
        assert result["usage"]["completion_tokens"] == 3 and result["worker"] == "w1"

        chat = b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "priority": 5}'
        assert json.loads((await nc.request("iris.api.chat", chat, timeout=10)).data)["usage"]["completion_tokens"] == 2

        bad = await nc.request("iris.api.chat", b'{"prompt": "no messages"}', timeout=10)
        assert bad.headers is not None and bad.headers["Nats-Service-Error-Code"] == "400"
        assert json.loads(bad.data)["code"] == "invalid_request"
        unknown = await nc.request("iris.api.generate", b'{"prompt": "x", "colour": "red"}', timeout=10)
        assert unknown.headers is not None and "colour" in unknown.headers["Nats-Service-Error"]

        info = json.loads((await nc.request("$SRV.INFO.iris", b"", timeout=5)).data)
        assert {e["subject"] for e in info["endpoints"]} == {"iris.api.generate", "iris.api.chat"}
        await api.stop()


async def test_concurrent_calls_run_at_once(nats_server: NatsServer, nc: NATS) -> None:
    """nats-py runs a subscription's callbacks one by one: each call must get its own task, or 8 calls on
    8 free slots run one after another."""
    engine = FakeEngine("fake", slots=8, tokens_per_s=5)
    async with broker(nats_server.url), worker(nats_server.url, engine, "w1") as service:
        api = GatewayService(GatewayConfig(nats_url=nats_server.url, http_port=0))
        await api.start()

        async def model_known() -> bool:
            return bool(api.models.live())

        await eventually(model_known, what="a worker heartbeat")
        body = b'{"prompt": "hello", "max_tokens": 30}'
        calls = [asyncio.ensure_future(nc.request("iris.api.generate", body, timeout=60)) for _ in range(8)]

        async def all_running() -> bool:
            return len(service.busy) == 8

        await eventually(all_running, timeout_s=5, what="8 calls generating at once")  # each runs 6 s
        replies = await asyncio.gather(*calls)
        assert [json.loads(r.data)["usage"]["completion_tokens"] for r in replies] == [30] * 8
        await api.stop()
