"""Cancels that are never lost: stream `IRIS_CANCELS` keeps every `iris.cancel.<request id>` publish for as
long as a request may live (`MAX_DEADLINE_S`), and every broker and worker reads it into a `CancelBook`.

A client publishes a cancel whenever it likes: before the broker's consumer reached its request in a deep
backlog, while an offer is in flight, while no broker leads. JetStream stores it whoever listens, so the
leader checks the book when it indexes a request and before each offer, a worker when it accepts a lease
and while it runs one, and a new term reads the whole stream before its first request. The stream holds
one message per request id (the latest), headers only are read, and entries age out of the book as they
age out of the stream.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy, DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from schemas.headers import MAX_DEADLINE_S
from schemas.subjects import CANCEL_FILTER, CANCEL_STREAM, cancelled_request_id, is_token

CANCEL_MEMORY_S = MAX_DEADLINE_S  # no request lives longer: its deadline is at most this far from its publish
CATCH_UP_TIMEOUT_S = 10.0


def cancel_stream_config(replicas: int, max_msgs: int = 1_000_000) -> StreamConfig:
    return StreamConfig(
        name=CANCEL_STREAM,
        subjects=[CANCEL_FILTER],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=CANCEL_MEMORY_S,
        max_msgs_per_subject=1,
        max_msgs=max_msgs,
        max_bytes=256 * 1024**2,
        discard=DiscardPolicy.OLD,
        allow_direct=True,
        num_replicas=replicas,
    )


class CancelBook:
    """Pure: the request ids cancelled in the last `CANCEL_MEMORY_S`, each until its cancel ages out."""

    def __init__(self, memory_ms: int = int(CANCEL_MEMORY_S * 1000)) -> None:
        self.memory_ms = memory_ms
        self._expires_ms: dict[str, int] = {}
        self._expiry_order: list[tuple[int, str]] = []  # heap of (expires_ms, request id), lazy

    def add(self, request_id: str, cancelled_ms: int) -> None:
        expires_ms = cancelled_ms + self.memory_ms
        if expires_ms > self._expires_ms.get(request_id, 0):
            self._expires_ms[request_id] = expires_ms
            heapq.heappush(self._expiry_order, (expires_ms, request_id))

    def cancelled(self, request_id: str) -> bool:
        return request_id in self._expires_ms

    def forget_expired(self, now_ms: int) -> None:
        while self._expiry_order and self._expiry_order[0][0] <= now_ms:
            expires_ms, request_id = heapq.heappop(self._expiry_order)
            if self._expires_ms.get(request_id) == expires_ms:
                del self._expires_ms[request_id]

    def __len__(self) -> int:
        return len(self._expires_ms)


class CancelFeed:
    """Reads `IRIS_CANCELS` (headers-only ordered consumer, from its first message) into `book`, and hands
    each cancel as it arrives to `on_cancel(request id)`. `start` returns once what the stream held at the
    start is in the book, so a new term or a new worker never acts on a request its cancel would stop."""

    def __init__(
        self,
        nc: NATS,
        book: CancelBook,
        on_cancel: Callable[[str], Awaitable[None]],
        log: structlog.stdlib.BoundLogger,
    ) -> None:
        self.nc, self.book, self.on_cancel, self.log = nc, book, on_cancel, log
        self._sub: Any = None
        self._caught_up = asyncio.Event()

    async def start(self) -> None:
        js = self.nc.jetstream()
        held = (await js.stream_info(CANCEL_STREAM)).state.messages
        if not held:
            self._caught_up.set()
        self._sub = await js.subscribe(
            CANCEL_FILTER,
            stream=CANCEL_STREAM,
            cb=self._deliver,
            ordered_consumer=True,
            config=ConsumerConfig(headers_only=True, deliver_policy=DeliverPolicy.ALL),
        )
        try:
            await asyncio.wait_for(self._caught_up.wait(), CATCH_UP_TIMEOUT_S)
        except TimeoutError:
            self.log.warning("cancels not read to the end in time; going on", read=len(self.book), held=held)

    async def _deliver(self, msg: Msg) -> None:
        request_id = cancelled_request_id(msg.subject)
        meta = msg.metadata
        if is_token(request_id):
            self.book.add(request_id, int(meta.timestamp.timestamp() * 1000))
            try:
                await self.on_cancel(request_id)
            except Exception:  # one cancel must never stop the feed every later one comes through
                self.log.exception("cancel not applied", request_id=request_id)
        if meta.num_pending == 0:
            self._caught_up.set()

    async def unsubscribe(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()
            except Exception as exc:  # the connection may be closing already
                self.log.info("cancel subscription not removed cleanly", error=str(exc))
