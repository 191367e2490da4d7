"""An HTTP gateway in-process in front of a real broker and workers on a real nats-server, for tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import openai

from gateway.config import ApiKey, GatewayConfig, hash_key
from gateway.service import GatewayService
from iris.launch.nats_server import free_port
from tests.integration.services import eventually

PAID_KEY = "paid-key-0123456789"  # user alice, workload paid (may also use default), priority up to 5
OPEN_KEY = "open-key-0123456789"  # user bob, workload default, priority 1
LIMITED_KEY = "limited-key-0123456789"  # user carol: 2 requests/min
DAVE_KEY = "dave-key-0123456789"  # user dave, workload default, priority 1 (bob's peer)
TEST_KEYS = [
    ApiKey(sha256=hash_key(DAVE_KEY), user="dave"),
    ApiKey(sha256=hash_key(PAID_KEY), user="alice", workload="paid", workloads=["default"], max_priority=5),
    ApiKey(sha256=hash_key(OPEN_KEY), user="bob"),
    ApiKey(sha256=hash_key(LIMITED_KEY), user="carol", requests_per_min=2),
]


@asynccontextmanager
async def gateway(
    url: str, *models: str, ready_timeout_s: float = 30.0, **options: object
) -> AsyncIterator[GatewayService]:
    """A gateway on a free loopback port that has seen heartbeats of `models`; `.http.url` is its base URL."""
    config = GatewayConfig(nats_url=url, http_port=free_port(), api_keys=TEST_KEYS, **options)  # type: ignore[arg-type]
    async with GatewayService(config) as service:

        async def ready() -> bool:
            return set(models) <= set(service.models.live())

        await eventually(ready, ready_timeout_s, f"heartbeats of {models}")
        yield service


def metric(service: GatewayService, name: str, **labels: str) -> float:
    value = service.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}]


def openai_client(url: str, key: str = PAID_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)
