"""Deep-backlog fairness through real NATS: one user floods 10,000 requests into a workload, then another
user of the same workload sends one. It must start next (not behind the flood): at most the flood
request that was already running, and one dispatched alongside it, finish before it."""

from __future__ import annotations

import asyncio
import time

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from gpu_worker.engines.fake import FakeEngine
from iris.launch.nats_server import NatsServer
from iris.sdk.client import Client
from tests.integration.services import broker, eventually, stream_messages, worker

FLOOD = 10_000


async def test_newcomer_starts_ahead_of_a_10k_flood(nats_server: NatsServer, nc: NATS) -> None:
    async with broker(nats_server.url), worker(nats_server.url, FakeEngine("fake", tokens_per_s=400), "w1"):
        events: list[str] = []

        async def on_flood_reply(msg: Msg) -> None:
            if (msg.headers or {}).get("Iris-Kind") == "result":
                events.append("flood")

        inbox = nc.new_inbox()
        await nc.subscribe(inbox, cb=on_flood_reply)
        js = nc.jetstream()
        deadline = str(int(time.time() * 1000) + 3_000_000)
        body = b'{"prompt": "flood", "max_tokens": 20}'
        acks = [
            await js.publish_async(
                "iris.req.fake.default",
                body,
                headers={
                    "Iris-Reply-To": inbox,
                    "Iris-User": "flood",
                    "Iris-Deadline": deadline,
                    "Nats-Msg-Id": f"f{i}",
                },
            )
            for i in range(FLOOD)
        ]
        await asyncio.gather(*acks)

        async def flood_running() -> bool:
            return len(events) >= 3 and await stream_messages(nc) > FLOOD - 100

        await eventually(flood_running, timeout_s=60, what="the flood to be queued and running")
        before = len(events)
        result = await Client(nc).complete("me too", model="fake", user="alice", max_tokens=5)
        finished_ahead = len(events) - before
        assert result.usage.completion_tokens == 5
        assert finished_ahead <= 2, f"{finished_ahead} flood requests finished before the newcomer"
        assert await stream_messages(nc) > FLOOD - 200  # the flood really was still waiting
