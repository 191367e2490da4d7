"""The feed of the broker's index: `IRIS_REQUESTS` read in stream order, headers only, from the first message
still in the stream, with a bounded read-ahead, plus a watchdog.

A push consumer sends whatever the stream holds as fast as the socket takes it: a burst of 100,000 requests
sat in the client's queue as 100,000 parsed messages (+100 MB of broker RSS that never went back), since an
ordered consumer's flow control only bounds bytes on the wire (64 MB of headers). So the feed pulls: an
ephemeral pull consumer with no acks, asked for `READ_AHEAD` messages at a time and asked again only when
those were indexed. A message arrives as soon as it is stored (the pull request waits on the server), so an
idle feed costs no latency.

It resets itself like nats-py's ordered consumer does, from the stream sequence after the last one it
delivered (the index ignores a sequence it already knows): on a gap in the consumer's sequence (a message
lost on a reconnect), when the consumer is gone (a node down, an election), and when its pull request went
quiet (no message, heartbeat or expiry in `QUIET_S`).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from schemas.subjects import JS_PULL_NEXT, REQUEST_STREAM, WHOLE_STREAM

READ_AHEAD = 1_000  # messages asked for at once: the most the broker holds unindexed
PULL_EXPIRES_S = 30.0
PULL_HEARTBEAT_S = 2.0
QUIET_S = 3 * PULL_HEARTBEAT_S
CONSUMER_CHECK_S = 2.0
CONSUMER_INACTIVE_S = 120.0  # a consumer its broker left behind goes by itself
# nats-py hands a subscription's queued messages to its callback without returning to the event loop while
# the queue is not empty: a read-ahead of indexing that never awaits would starve the leader's key renewals
# and the worker heartbeats. So others run every YIELD_EVERY requests.
YIELD_EVERY = 256
NS = 1_000_000_000
HEARTBEAT, EXPIRED = "100", "408"


class _PullRequest(msgspec.Struct):
    batch: int
    expires: int
    idle_heartbeat: int


_pull_encoder = msgspec.json.Encoder()


def _status(msg: Msg) -> str | None:
    """A pull request's status message (heartbeat, expired, consumer gone...) carries a Status header and no
    reply subject; a stored message always has its `$JS.ACK` reply."""
    return None if msg.reply else (msg.headers or {}).get("Status", "")


class RequestFeed:
    def __init__(self, nc: NATS, on_request: Callable[[Msg], Awaitable[None]], log: structlog.stdlib.BoundLogger):
        self.nc = nc
        self.on_request = on_request
        self.log = log
        self.delivered_seq = 0  # highest stream sequence delivered
        self._consumer = ""
        self._consumer_seq = 0  # the consumer's sequence of the last message: a jump means one was lost
        self._asked = 0  # messages the open pull request may still bring
        self._heard = 0.0  # monotonic time of the last message or status
        self._since_yield = 0
        self._sub: Subscription | None = None
        self._resetting: asyncio.Task[None] | None = None
        self._generation = 0  # of the subscription: what is still queued for an earlier one is dropped

    async def subscribe(self, policy: DeliverPolicy = DeliverPolicy.ALL, start_seq: int | None = None) -> None:
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            headers_only=True,
            deliver_policy=policy,
            opt_start_seq=start_seq,
            filter_subject=WHOLE_STREAM,
            inactive_threshold=CONSUMER_INACTIVE_S,
            mem_storage=True,
            num_replicas=1,
        )
        self._generation += 1
        self._sub = await self.nc.subscribe(self.nc.new_inbox(), cb=functools.partial(self._deliver, self._generation))
        self._consumer = (await self.nc.jetstream().add_consumer(REQUEST_STREAM, config)).name or ""
        self._consumer_seq = 0
        await self._pull()

    @property
    def subscribed(self) -> bool:
        return self._sub is not None

    async def _pull(self) -> None:
        assert self._sub is not None
        self._asked, self._heard = READ_AHEAD, time.monotonic()
        ask = _PullRequest(READ_AHEAD, int(PULL_EXPIRES_S * NS), int(PULL_HEARTBEAT_S * NS))
        await self.nc.publish(f"{JS_PULL_NEXT}.{self._consumer}", _pull_encoder.encode(ask), reply=self._sub.subject)

    async def _deliver(self, generation: int, msg: Msg) -> None:
        if generation != self._generation:
            return  # still queued for a subscription a reset replaced
        self._heard = time.monotonic()
        status = _status(msg)
        if status is not None:
            await self._on_status(msg, status)
            return
        consumer_seq = msg.metadata.sequence.consumer
        if consumer_seq != self._consumer_seq + 1:
            self._reset_soon(f"consumer sequence {consumer_seq} after {self._consumer_seq}")
            return
        self._consumer_seq = consumer_seq
        self.delivered_seq = max(self.delivered_seq, msg.metadata.sequence.stream)
        await self.on_request(msg)
        self._asked -= 1
        if self._asked <= 0:
            await self._pull()
        self._since_yield += 1
        if self._since_yield >= YIELD_EVERY:
            self._since_yield = 0
            await asyncio.sleep(0)

    async def _on_status(self, msg: Msg, status: str) -> None:
        headers = msg.headers or {}
        if status == HEARTBEAT:
            last = int(headers.get("Nats-Last-Consumer", self._consumer_seq) or 0)
            if last > self._consumer_seq:  # the server sent messages this feed never got
                self._reset_soon(f"heartbeat names consumer sequence {last} after {self._consumer_seq}")
        elif status == EXPIRED:
            await self._pull()
        else:  # 409 (leadership change, consumer deleted), no responders...: the watchdog looks, not a tight loop
            self.log.info("request pull ended", status=status, description=headers.get("Description", ""))
            self._heard = 0.0

    def _reset_soon(self, why: str) -> None:
        """From a task of its own: unsubscribing cancels the task that runs this subscription's callback."""
        if self._resetting is None or self._resetting.done():
            self._resetting = asyncio.get_running_loop().create_task(self._reset(why))

    async def _reset(self, why: str) -> None:
        self.log.warning("request feed reset", why=why, after_seq=self.delivered_seq)
        await self.unsubscribe()
        await self.subscribe(DeliverPolicy.BY_START_SEQUENCE, self.delivered_seq + 1)

    async def watch(self) -> None:
        """Every `CONSUMER_CHECK_S`: a consumer that is gone, or unreachable while the pull is quiet (its node
        died: an R1 consumer does not move), is made again; a quiet pull is asked again once, then reset."""
        asked_again = False
        while True:
            await asyncio.sleep(CONSUMER_CHECK_S)
            if self._resetting is not None and not self._resetting.done():
                continue
            quiet = time.monotonic() - self._heard > QUIET_S
            try:
                why = await self._check(quiet, asked_again)
                asked_again = quiet and why is None
                if why:
                    await self._reset(why)
            except Exception as exc:  # no JetStream for now (an election): look again next round
                self.log.info("request consumer not checked", error=str(exc))

    async def _check(self, quiet: bool, asked_again: bool) -> str | None:
        """Why the feed needs a new consumer, or None (a quiet pull is asked again)."""
        try:
            await self.nc.jetstream().consumer_info(REQUEST_STREAM, self._consumer)
        except NotFoundError:
            return "request consumer lost"
        except Exception as exc:
            if quiet:
                return f"request consumer unreachable while quiet ({exc})"
            raise
        if quiet and asked_again:
            return "request pull still quiet after asking again"
        if quiet:
            self.log.info("request pull went quiet, asking again", after_seq=self.delivered_seq)
            await self._pull()
        return None

    async def unsubscribe(self) -> None:
        if self._resetting is not None and self._resetting is not asyncio.current_task():
            self._resetting.cancel()
        sub, self._sub = self._sub, None
        try:
            if sub is not None:
                await sub.unsubscribe()
            await self.nc.jetstream().delete_consumer(REQUEST_STREAM, self._consumer)
        except Exception as exc:  # the subscription or consumer may be half gone already
            self.log.info("request consumer not removed cleanly", error=str(exc))
