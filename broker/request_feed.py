"""The feed of the broker's index: a headers-only ordered consumer on `IRIS_REQUESTS`, from the first
message still in the stream, plus a watchdog. nats-py resets an ordered consumer that dies, but that reset
can itself fail (a node down mid-election), and then no request would ever be seen again: if the consumer
is gone, the watchdog subscribes again right after the last sequence delivered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from schemas.subjects import REQUEST_STREAM, WHOLE_STREAM

CONSUMER_HEARTBEAT_S = 2.0
CONSUMER_CHECK_S = 5.0
# nats-py hands a subscription's queued messages to its callback without returning to the event loop while
# the queue is not empty: a 100,000-request burst would starve the leader's key renewals and the worker
# heartbeats for seconds (the broker deposed itself and declared live workers gone). So every YIELD_EVERY
# requests others run, but only while fewer than YIELD_BELOW_PENDING wait in the queue: each turn of the
# socket reader adds up to ~2,000, and yielding regardless let the queue reach 50,000 (+26 MB RSS).
YIELD_EVERY = 256
YIELD_BELOW_PENDING = 1_000


class RequestFeed:
    def __init__(self, nc: NATS, on_request: Callable[[Msg], Awaitable[None]], log: structlog.stdlib.BoundLogger):
        self.nc = nc
        self.on_request = on_request
        self.log = log
        self.delivered_seq = 0  # highest stream sequence delivered
        self._since_yield = 0
        self._sub: Any = None

    async def subscribe(self, policy: DeliverPolicy = DeliverPolicy.ALL, start_seq: int | None = None) -> None:
        self._sub = await self.nc.jetstream().subscribe(
            WHOLE_STREAM,
            stream=REQUEST_STREAM,
            cb=self._deliver,
            ordered_consumer=True,
            idle_heartbeat=CONSUMER_HEARTBEAT_S,
            config=ConsumerConfig(headers_only=True, deliver_policy=policy, opt_start_seq=start_seq),
        )

    @property
    def subscribed(self) -> bool:
        return self._sub is not None

    async def _deliver(self, msg: Msg) -> None:
        self.delivered_seq = max(self.delivered_seq, msg.metadata.sequence.stream)
        await self.on_request(msg)
        self._since_yield += 1
        if self._since_yield >= YIELD_EVERY and self._sub.pending_msgs < YIELD_BELOW_PENDING:
            self._since_yield = 0
            await asyncio.sleep(0)

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(CONSUMER_CHECK_S)
            try:
                await self._sub.consumer_info()
            except NotFoundError:
                self.log.warning("request consumer lost, subscribing again", after_seq=self.delivered_seq)
                await self.unsubscribe()
                await self.subscribe(DeliverPolicy.BY_START_SEQUENCE, self.delivered_seq + 1)
            except Exception as exc:  # unavailable for now (leader election): look again next round
                self.log.info("request consumer not checked", error=str(exc))

    async def unsubscribe(self) -> None:
        try:
            await self._sub.unsubscribe()
        except Exception as exc:  # the subscription may be half gone already
            self.log.info("request subscription not removed cleanly", error=str(exc))
