"""A broker that takes over adopts what the old term admitted: the backlog keeps its place, even over a
`max_queue` the new broker was started with, and nothing the old term accepted is re-judged."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS

from broker.config import BrokerConfig
from broker.service import BrokerService
from gpu_worker.engines.fake import FakeEngine
from iris.launch.nats_server import NatsServer
from iris.sdk.client import Client
from tests.integration.services import broker, eventually, wait_stream_empty, worker


async def test_backlog_over_a_lowered_max_queue_is_served_by_the_next_term(nats_server: NatsServer, nc: NATS) -> None:
    url = nats_server.url
    engine = FakeEngine("fake", tokens_per_s=50)
    client = Client(nc)
    first = BrokerService(BrokerConfig(nats_url=url))
    await first.start()
    async with worker(url, engine, "w1"):
        answers = [asyncio.ensure_future(client.complete(f"r{i}", model="fake", max_tokens=10)) for i in range(6)]

        async def all_queued() -> bool:
            return first.scheduler.waiting("fake") + first.scheduler.running("fake") == 6

        await eventually(all_queued, what="six requests admitted")
        await first.stop()
        async with broker(url, max_queue=2):  # a new term, with a lower limit than the backlog's depth
            results = await asyncio.wait_for(asyncio.gather(*answers), 60)
        assert [r.usage.completion_tokens for r in results] == [10] * 6
        await wait_stream_empty(nc)
