"""A key's `tokens_per_min` holds against the two ways around it: many calls at once (each reserves its
`max_tokens` at admission, so they see each other) and answers streamed then abandoned (each is settled to
what it streamed). The tokens really generated are counted on the wire, from the chunks the worker sent."""

from __future__ import annotations

import asyncio
import time

import httpx
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from gateway.config import ApiKey, GatewayConfig, hash_key
from gateway.service import GatewayService
from gpu_worker.engines.fake import FakeEngine
from iris.launch.nats_server import NatsServer, free_port
from schemas import headers as h
from tests.integration.services import broker, eventually, worker

BUDGET = 1_000
CONCURRENT_KEY = "concurrent-key-0123456789"
DISCONNECT_KEY = "disconnect-key-0123456789"


class TokenMeter:
    """Chunks on every inbox: one per generated token with FakeEngine."""

    def __init__(self) -> None:
        self.tokens = 0

    async def count(self, msg: Msg) -> None:
        if (msg.headers or {}).get(h.KIND) == h.KIND_CHUNK:
            self.tokens += 1


def chat(max_tokens: int) -> dict[str, object]:
    return {"model": "fake", "messages": [{"role": "user", "content": "count"}], "options": {"num_predict": max_tokens}}


def bound(max_tokens: int, started_s: float) -> float:
    """The budget, what refilled meanwhile, and one reservation (max_tokens and a generous prompt estimate)."""
    return BUDGET + BUDGET * (time.monotonic() - started_s) / 60 + max_tokens + 100


async def abandon_until_refused(http: httpx.AsyncClient, auth: dict[str, str]) -> bool:
    """Start long streamed answers and walk away from each mid-answer; whether one was refused (429)."""
    for _ in range(40):  # without settling, every one of these would be free
        async with http.stream("POST", "/api/chat", json=chat(1_000), headers=auth) as response:
            if response.status_code == 429:
                return True
            lines = 0
            async for _line in response.aiter_lines():
                lines += 1
                if lines == 100:
                    break  # walk away mid-answer
    return False


async def test_token_budget_holds_against_concurrency_and_disconnects(nats_server: NatsServer, nc: NATS) -> None:
    url = nats_server.url
    meter = TokenMeter()
    await nc.subscribe("_INBOX.>", cb=meter.count)
    keys = [
        ApiKey(sha256=hash_key(key), user=user, tokens_per_min=BUDGET)
        for key, user in ((CONCURRENT_KEY, "many"), (DISCONNECT_KEY, "leaver"))
    ]
    config = GatewayConfig(nats_url=url, http_port=free_port(), api_keys=keys)
    async with (
        broker(url),
        worker(url, FakeEngine("fake", slots=10, tokens_per_s=200), "w1"),
        GatewayService(config) as gw,
    ):

        async def ready() -> bool:
            return "fake" in gw.models.live()

        await eventually(ready, what="the fake model")
        assert gw.http is not None
        async with httpx.AsyncClient(base_url=gw.http.url, timeout=60) as http:
            started_s = time.monotonic()
            auth = {"Authorization": f"Bearer {CONCURRENT_KEY}"}

            async def one() -> int:
                async with http.stream("POST", "/api/chat", json=chat(300), headers=auth) as response:
                    await response.aread()
                    return response.status_code

            statuses = await asyncio.gather(*(one() for _ in range(10)))
            assert sorted(set(statuses)) == [200, 429], statuses
            assert meter.tokens <= bound(300, started_s), (meter.tokens, statuses)

            before, started_s = meter.tokens, time.monotonic()
            auth = {"Authorization": f"Bearer {DISCONNECT_KEY}"}
            assert await abandon_until_refused(http, auth), "streamed-then-abandoned answers never ran out of budget"

            async def quiet() -> bool:
                return gw.metrics.registry.get_sample_value("iris_gateway_in_flight") == 0

            await eventually(quiet, what="the abandoned answers to end")
            assert meter.tokens - before <= bound(1_000, started_s), meter.tokens - before
