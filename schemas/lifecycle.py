"""How every Iris service process lives: start, wait for SIGINT/SIGTERM, stop (drain) once."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable


async def run_until_signal(start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await start()
        await stopping.wait()
    finally:
        await stop()
