"""The status page's event stream: one snapshot per update, encoded once and shared by every subscriber.

The hub hears `iris.broker.stats` all along (so the charts have history when a page opens) and wakes on
each of them, or every `interval_s` when no broker speaks; it builds one server-sent-events frame only
while somebody listens, and hands that same bytes object to every subscriber. A subscriber holds only
the newest frame: a slow browser skips updates instead of queueing them, so no reader costs the gateway
more than one reference per update. `stop()` ends every open stream (the HTTP server waits for open
responses before it stops).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from gateway.http.status.board import StatusBoard
from gateway.metrics import Refusals
from gateway.model_directory import ModelDirectory
from runtime.clock import now_ms
from schemas.errors import NoCapacity
from schemas.messages import broker_stats_decoder
from schemas.subjects import BROKER_STATS_SUBJECT

INTERVAL_S = 1.0  # an update at least this often, broker stats or not (workers, refusals)
MIN_GAP_S = 0.25  # and at most this often, however often stats come
MAX_SUBSCRIBERS = 64
RECONNECT_MS = 2000  # what the browser waits before it reconnects a dropped stream
_json = msgspec.json.Encoder()


def frame(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + _json.encode(data) + b"\n\n"


class Subscriber:
    """One open event stream: the newest frame not yet sent, and a wake-up."""

    def __init__(self) -> None:
        self.frame = b""
        self.closed = False
        self._ready = asyncio.Event()

    def offer(self, data: bytes) -> None:
        self.frame = data
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def next_frame(self) -> bytes | None:
        await self._ready.wait()
        self._ready.clear()
        return None if self.closed else self.frame


class StatusHub:
    def __init__(
        self,
        models: ModelDirectory,
        refusals: Refusals,
        log: structlog.stdlib.BoundLogger,
        interval_s: float = INTERVAL_S,
    ) -> None:
        self.board = StatusBoard()
        self.models, self.refusals, self.log = models, refusals, log
        self.interval_s = interval_s
        self.subscribers: set[Subscriber] = set()
        self.frames_built = 0
        self._changed = asyncio.Event()
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, nc: NATS) -> None:
        self._sub = await nc.subscribe(BROKER_STATS_SUBJECT, cb=self._on_stats)
        self._task = asyncio.create_task(self._broadcast())

    async def stop(self) -> None:
        for subscriber in list(self.subscribers):
            subscriber.close()
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(Exception):  # the connection may be closing already
                await sub.unsubscribe()

    def snapshot(self) -> dict[str, Any]:
        beats = [seen for state in self.models.models.values() for seen in state.workers.values()]
        recent = [(seen_s, beat) for seen_s, beat in beats if time.monotonic() - seen_s < self.models.forget_s]
        return self.board.snapshot(time.monotonic(), now_ms(), recent, self.refusals.kept)

    def open_stream(self) -> AsyncGenerator[bytes, None]:
        """One subscriber's frames: the reconnect delay, the charts' history, the state now, then updates."""
        if len(self.subscribers) >= MAX_SUBSCRIBERS or self._task is None:
            raise NoCapacity(f"the status page has {len(self.subscribers)} viewers (at most {MAX_SUBSCRIBERS})")
        return self._frames()

    async def _frames(self) -> AsyncGenerator[bytes, None]:
        subscriber = Subscriber()
        self.subscribers.add(subscriber)  # here, not before: a stream never started has nothing to remove
        if self._task is None:
            subscriber.close()  # stopped meanwhile
        try:
            yield f"retry: {RECONNECT_MS}\n\n".encode() + frame("history", self.board.history_view())
            yield frame("snapshot", self.snapshot())
            while not subscriber.closed and (data := await subscriber.next_frame()) is not None:
                yield data
        finally:
            self.subscribers.discard(subscriber)

    async def _on_stats(self, msg: Msg) -> None:
        try:
            stats = broker_stats_decoder.decode(msg.data)
        except msgspec.DecodeError:
            self.log.warning("undecodable broker stats", subject=msg.subject, size=len(msg.data))
            return
        self.board.on_stats(stats, time.monotonic(), self.models.live())
        self._changed.set()

    async def _broadcast(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.interval_s)
            self._changed.clear()
            if self.subscribers:
                try:
                    data = frame("snapshot", self.snapshot())
                except Exception:
                    self.log.exception("status snapshot failed")
                    continue
                self.frames_built += 1
                for subscriber in self.subscribers:
                    subscriber.offer(data)
            await asyncio.sleep(MIN_GAP_S)
