"""The broker's request feed reads `IRIS_REQUESTS` with a bounded read-ahead (a burst never sits in the
broker's memory: `broker.request_feed`), in stream order, and carries on after its consumer is lost."""

from __future__ import annotations

import asyncio

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from broker.config import BrokerConfig
from broker.request_feed import READ_AHEAD, RequestFeed
from broker.streams import ensure_streams
from schemas.subjects import REQUEST_STREAM, request_subject
from tests.integration.services import eventually

BURST = 3 * READ_AHEAD


async def publish_burst(nc: NATS, n: int, first: int = 0) -> None:
    js = nc.jetstream()
    acks = [await js.publish_async(request_subject("m", "w"), b"{}", headers={"N": str(i)}) for i in range(first, n)]
    await asyncio.gather(*acks)


async def delivered_by_server(nc: NATS) -> int:
    consumers = await nc.jetstream().consumers_info(REQUEST_STREAM)
    return sum(info.delivered.stream_seq for info in consumers)


class Reader:
    """An `on_request` that records stream sequences and can be held still, as a busy broker is."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.go = asyncio.Event()
        self.first = asyncio.Event()

    async def has(self, n: int) -> bool:
        return len(self.seqs) >= n

    async def on_request(self, msg: Msg) -> None:
        self.first.set()
        await self.go.wait()
        self.seqs.append(msg.metadata.sequence.stream)


async def test_a_burst_is_read_ahead_at_most_read_ahead_messages(nc: NATS) -> None:
    await ensure_streams(nc.jetstream(), BrokerConfig())
    await publish_burst(nc, BURST)
    reader = Reader()
    feed = RequestFeed(nc, reader.on_request, structlog.get_logger())
    await feed.subscribe()
    await asyncio.wait_for(reader.first.wait(), 10)
    # The reader is stuck on the first message: the server must not have sent the whole burst meanwhile.
    assert await delivered_by_server(nc) <= READ_AHEAD
    reader.go.set()
    await eventually(lambda: reader.has(BURST), what="the whole burst read")
    assert reader.seqs == list(range(1, BURST + 1))
    await feed.unsubscribe()


async def test_the_feed_carries_on_after_its_consumer_is_deleted(nc: NATS) -> None:
    await ensure_streams(nc.jetstream(), BrokerConfig())
    reader = Reader()
    reader.go.set()
    feed = RequestFeed(nc, reader.on_request, structlog.get_logger())
    await feed.subscribe()
    watch = asyncio.get_running_loop().create_task(feed.watch())
    await publish_burst(nc, 10)
    await eventually(lambda: reader.has(10), what="the first ten read")
    for info in await nc.jetstream().consumers_info(REQUEST_STREAM):
        await nc.jetstream().delete_consumer(REQUEST_STREAM, info.name)
    await publish_burst(nc, 20, first=10)
    await eventually(lambda: reader.has(20), what="the ten after the consumer was deleted read")
    assert reader.seqs == list(range(1, 21))  # each once, in order: the new consumer starts after the last read
    watch.cancel()
    await feed.unsubscribe()
