"""A streamed HTTP answer that shows its place in the queue and never goes quiet.

Before committing to a status, `EventPump.head` reads the answer's first events: an error there is still
a real HTTP status (with `Retry-After`), and so is one right after admission (`commit_after_s`: a
request the broker starts at once keeps the old behaviour). A request still waiting after that commits
to 200: the stream carries its position and ETA (`QueueUpdate`, in the dialect's own way), then the
answer. Whenever nothing was sent for `keepalive_s` the dialect's keep-alive goes out, so proxies and
client idle timeouts never fire on a long wait. Errors after the commit (a deadline passing in the
queue, a worker failing) travel in the stream in the dialect's error shape.

Reads are never cancelled to time them out: cancelling a pending `anext` would end the answer (and
cancel the request), so a wait that times out leaves the read pending for the next call.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable
from typing import Protocol

from gateway.forwarding import AnswerEvent, Delta
from schemas.errors import IrisError
from schemas.messages import QueueUpdate, Result


class StreamFormat(Protocol):
    def delta(self, delta: Delta) -> bytes: ...

    def end(self, result: Result) -> bytes: ...

    def stream_error(self, exc: IrisError) -> bytes: ...

    def queued(self, update: QueueUpdate) -> bytes: ...

    def keepalive(self, update: QueueUpdate | None) -> bytes: ...


class EventPump:
    def __init__(self, events: AsyncGenerator[AnswerEvent, None]) -> None:
        self._events = events
        self._pending: asyncio.Future[AnswerEvent] | None = None

    async def next(self, timeout_s: float | None) -> AnswerEvent | None:
        """The next event, or None when `timeout_s` passed first (the read stays pending)."""
        if self._pending is None:
            self._pending = asyncio.ensure_future(anext(self._events))
        done, _ = await asyncio.wait([self._pending], timeout=timeout_s)
        if not done:
            return None
        pending, self._pending = self._pending, None
        return pending.result()

    async def head(self, commit_after_s: float) -> list[AnswerEvent]:
        """Events up to the first text or `Result`, or the queue updates of a request still waiting
        `commit_after_s` after its admission."""
        events: list[AnswerEvent] = []
        commit_at_s: float | None = None
        while True:
            timeout_s = None if commit_at_s is None else max(0.0, commit_at_s - time.monotonic())
            event = await self.next(timeout_s)
            if event is None:
                return events
            events.append(event)
            if not isinstance(event, QueueUpdate):
                return events
            if commit_at_s is None:
                commit_at_s = time.monotonic() + commit_after_s

    async def aclose(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        await self._events.aclose()


async def stream_body(
    pump: EventPump,
    head: list[AnswerEvent],
    fmt: StreamFormat,
    keepalive_s: float,
    on_first_text: Callable[[], None],
    on_result: Callable[[Result], None],
) -> AsyncGenerator[bytes, None]:
    """The streamed answer's bytes: what `head` read, then every further event, keep-alives between."""
    last_update: QueueUpdate | None = None
    texting = False
    try:
        pending = list(head)
        while True:
            event = pending.pop(0) if pending else await pump.next(keepalive_s)
            if event is None:
                yield fmt.keepalive(None if texting else last_update)
            elif isinstance(event, QueueUpdate):
                last_update = event
                yield fmt.queued(event)
            elif isinstance(event, Delta):
                if not texting:
                    texting = True
                    on_first_text()
                yield fmt.delta(event)
            else:
                on_result(event)
                yield fmt.end(event)
                return
    except IrisError as exc:
        yield fmt.stream_error(exc)
