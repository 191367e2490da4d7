"""An API key's end users (OpenAI's `user` field) split that key's share instead of adding shares, through
the real HTTP gateway and the real `openai` client: a key whose callers send 50 different `user` values is
served what a key with one is served, in the same workload at the same priority."""

from __future__ import annotations

import asyncio
from collections import Counter

import openai

from gpu_worker.engines.fake import FakeEngine
from iris.launch.nats_server import NatsServer
from tests.integration.gateway_stack import DAVE_KEY, OPEN_KEY, gateway
from tests.integration.services import broker, worker

LOOPS = 50  # closed loops per key: bob's each name their own end user, dave's all the same one
COUNTED = 200  # answers counted once every loop has had its first (connections up, both keys backlogged)


async def test_fifty_end_users_hold_one_share(nats_server: NatsServer) -> None:
    url = nats_server.url
    served: Counter[str] = Counter()
    warm: set[int] = set()
    done = asyncio.Event()
    async with (
        broker(url, max_concurrency=1),
        worker(url, FakeEngine("fake", tokens_per_s=5000), "w1", slots=1),
        gateway(url, "fake", max_in_flight=1000) as gw,
    ):
        base = f"{gw.http.url}/v1"  # type: ignore[union-attr]
        clients = {
            "bob": openai.AsyncOpenAI(base_url=base, api_key=OPEN_KEY, max_retries=0, timeout=120),
            "dave": openai.AsyncOpenAI(base_url=base, api_key=DAVE_KEY, max_retries=0, timeout=120),
        }

        async def loop(index: int, key: str, end_user: str) -> None:
            while not done.is_set():
                answer = await clients[key].completions.create(model="fake", prompt="hi", max_tokens=4, user=end_user)
                assert answer.usage is not None and answer.usage.completion_tokens == 4
                if len(warm) < 2 * LOOPS:
                    warm.add(index)
                elif sum(served.values()) < COUNTED:
                    served[key] += 1
                else:
                    done.set()

        await asyncio.gather(
            *(loop(i, "bob", f"end-user-{i}") for i in range(LOOPS)),
            *(loop(LOOPS + i, "dave", "only-one") for i in range(LOOPS)),
        )
    assert abs(served["bob"] / COUNTED - 0.5) <= 0.025, served
