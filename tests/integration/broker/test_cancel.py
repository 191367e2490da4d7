"""Cancel (`iris.cancel.<request id>`): a queued request leaves at once, a running one stops and frees
its slot, and a reader that walks away cancels its request."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.aio.client import Client as NATS

from gpu_worker.engines.fake import FakeEngine
from iris.launch.nats_server import NatsServer
from iris.sdk.client import Client
from schemas.errors import Cancelled
from tests.integration.services import broker, eventually, wait_stream_empty, worker


async def test_cancel_queued_request(nats_server: NatsServer, nc: NATS) -> None:
    engine = FakeEngine("fake", tokens_per_s=50)
    async with broker(nats_server.url), worker(nats_server.url, engine, "w1"):
        client = Client(nc)
        running = asyncio.ensure_future(client.complete("occupy", model="fake", max_tokens=100))

        async def started() -> bool:
            return engine.generations == 1

        await eventually(started, what="the first request to run")
        queued = client.generate("wait in line", model="fake", max_tokens=5)
        waiting = asyncio.ensure_future(queued.finish())

        async def in_queue() -> bool:
            return bool(queued.queue_updates)

        await eventually(in_queue, what="the queue update")
        await queued.cancel()
        with pytest.raises(Cancelled):
            await waiting
        assert (await running).finish_reason == "length"
    assert engine.generations == 1  # the cancelled request never ran


async def test_cancel_running_request_frees_slot(nats_server: NatsServer, nc: NATS) -> None:
    engine = FakeEngine("fake", tokens_per_s=20)
    async with broker(nats_server.url), worker(nats_server.url, engine, "w1") as service:
        client = Client(nc)
        generation = client.generate("a very long answer", model="fake", max_tokens=1000)
        chunks = 0
        with pytest.raises(Cancelled):
            async for _ in generation:
                chunks += 1
                if chunks == 3:
                    cancelled_at = time.monotonic()
                    await generation.cancel()
        stopped_after_s = time.monotonic() - cancelled_at
        assert chunks < 10 and stopped_after_s < 5
        follow_up = await client.complete("next", model="fake", max_tokens=2)
        assert follow_up.usage.completion_tokens == 2
        assert not service.busy
        await wait_stream_empty(nc)


async def test_abandoned_stream_is_cancelled(nats_server: NatsServer, nc: NATS) -> None:
    engine = FakeEngine("fake", tokens_per_s=20)
    async with broker(nats_server.url), worker(nats_server.url, engine, "w1") as service:
        stream = aiter(Client(nc).generate("walk away", model="fake", max_tokens=1000))
        await anext(stream)
        await stream.aclose()  # what a disconnecting HTTP client or a `break` + GC does

        async def freed() -> bool:
            return not service.running

        await eventually(freed, timeout_s=10, what="the abandoned request to stop")
        await wait_stream_empty(nc)
