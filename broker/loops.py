"""The leader's periodic work (ticks, stats) runs in loops no failure ends: an exception in one round is
logged with its traceback and the next round runs. A tick loop that died would leave a leader renewing its
key while no lease is reclaimed, no deadline expires and no ticket is cut off, so no standby would take
over either. `_deactivate` cancels the loops with the term."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

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
