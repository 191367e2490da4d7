"""How every Iris service process lives: start, wait for SIGINT/SIGTERM, stop (drain) once.

A second signal while stopping, or a stop that overruns `stop_timeout_s`, ends the process at once: an
operator must always be able to get a stuck service out of the way.
"""

from __future__ import annotations

import abc
import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Self


class Service(abc.ABC):
    """A service object: `start()`, `stop()`, and `async with` doing both."""

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def run_until_signal(
    start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]], stop_timeout_s: float = 60.0
) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def on_signal() -> None:
        if stopping.is_set():
            print("second signal: exiting now", file=sys.stderr, flush=True)
            os._exit(1)
        stopping.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        await start()
        await stopping.wait()
    finally:
        try:
            await asyncio.wait_for(stop(), stop_timeout_s)
        except TimeoutError:
            print(f"stop did not finish within {stop_timeout_s:.0f} s: exiting", file=sys.stderr, flush=True)
            os._exit(1)
