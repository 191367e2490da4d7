"""The leader's periodic work (ticks, stats) runs in loops no failure ends: an exception in one round is
logged with its traceback and the next round runs. A tick loop that died would leave a leader renewing its
key while no lease is reclaimed, no deadline expires and no ticket is cut off, so no standby would take
over either. `Term.end` cancels the loops with the term (`TaskGroup`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog


async def every(
    interval_s: float, step: Callable[[], Awaitable[None]], log: structlog.stdlib.BoundLogger, what: str
) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await step()
        except Exception:
            log.exception(f"{what} failed, the next round goes on")


async def guarded(action: Awaitable[None], log: structlog.stdlib.BoundLogger, what: str, seq: int) -> None:
    """One request's I/O failing (a full buffer while reconnecting, retries exhausted) skips no other."""
    try:
        await action
    except Exception:
        log.exception(f"{what} failed", seq=seq)


class TaskGroup:
    """Tasks with one owner: each failure is logged with its traceback, `cancel` ends them all, `wait` waits."""

    def __init__(self, log: structlog.stdlib.BoundLogger) -> None:
        self.log = log
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    async def cancel(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def wait(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("broker task failed", exc_info=task.exception())
