"""Reads stream `IRIS_CANCELS` into a `schemas.cancels.CancelBook` (every broker term and every worker
runs one), so a cancel published at any time stops its request wherever it is."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from schemas.cancels import CancelBook
from schemas.subjects import CANCEL_FILTER, CANCEL_STREAM, is_token, parse_cancel_subject

CATCH_UP_TIMEOUT_S = 10.0


class CancelFeed:
    """Reads `IRIS_CANCELS` (headers-only ordered consumer, from its first message) into `book`, and hands
    each cancel as it arrives to `on_cancel(owner or None, request id)`. `start` returns once what the stream
    held at the start is in the book, so a new term or a new worker never acts on a request its cancel would
    stop."""

    def __init__(
        self,
        nc: NATS,
        book: CancelBook,
        on_cancel: Callable[[str | None, str], Awaitable[None]],
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
        order = parse_cancel_subject(msg.subject)
        meta = msg.metadata
        if order is not None and is_token(order[1]) and (order[0] is None or is_token(order[0])):
            owner, request_id = order
            self.book.add(request_id, int(meta.timestamp.timestamp() * 1000), owner)
            try:
                await self.on_cancel(owner, request_id)
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
