"""Helpers that run Iris services in-process for integration tests, and wait on observable facts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from nats.aio.client import Client as NATS

from broker.config import BrokerConfig
from broker.service import BrokerService
from gpu_worker.config import WorkerConfig
from gpu_worker.engines.protocol import Engine
from gpu_worker.service import WorkerService
from iris.sdk.client import Client
from schemas.errors import IrisError
from schemas.subjects import REQUEST_STREAM


@asynccontextmanager
async def broker(url: str, **options: object) -> AsyncIterator[BrokerService]:
    async with BrokerService(BrokerConfig(nats_url=url, **options)) as service:  # type: ignore[arg-type]
        yield service


@asynccontextmanager
async def worker(url: str, engine: Engine, worker_id: str, **options: object) -> AsyncIterator[WorkerService]:
    config = WorkerConfig(nats_url=url, worker_id=worker_id, engine="fake", **options)  # type: ignore[arg-type]
    async with WorkerService(config, engine) as service:
        yield service


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 30.0, what: str = "condition") -> None:
    """Poll an observable fact until it holds (never a fixed sleep standing in for synchronisation)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


async def wait_for_models(client: Client, *models: str, timeout_s: float = 120.0) -> None:
    async def served() -> bool:
        return set(models) <= set(await client.models(wait_s=1.5, listen_s=1.1))

    await eventually(served, timeout_s, f"workers for {models}")


async def stream_messages(nc: NATS) -> int:
    info = await nc.jetstream().stream_info(REQUEST_STREAM)
    return int(info.state.messages)


async def wait_stream_empty(nc: NATS, timeout_s: float = 30.0) -> None:
    """Workers delete a request just after its final reply, so the stream empties a moment later."""

    async def empty() -> bool:
        return await stream_messages(nc) == 0

    await eventually(empty, timeout_s, "the request stream to be empty")


class SteadyLoad:
    """`total` requests, at most `in_flight` at a time, each ending as `outcomes[i]`: "result:<completion
    tokens>:attempt<n>" or "error:<code>". What fault tests put a system under while they break it."""

    def __init__(
        self, client: Client, total: int, in_flight: int, max_tokens: int, key_prefix: str, deadline_s: float = 120.0
    ) -> None:
        self.client, self.total, self.max_tokens, self.key_prefix = client, total, max_tokens, key_prefix
        self.deadline_s = deadline_s
        self.outcomes: dict[int, str] = {}
        self._slots = asyncio.Semaphore(in_flight)
        self._tasks = [asyncio.ensure_future(self._one(i)) for i in range(total)]

    async def _one(self, i: int) -> None:
        async with self._slots:
            key = f"{self.key_prefix}-{i}"
            try:
                result = await self.client.complete(
                    f"request {i}",
                    model="fake",
                    max_tokens=self.max_tokens,
                    idempotency_key=key,
                    deadline_s=self.deadline_s,
                )
                self.outcomes[i] = f"result:{result.usage.completion_tokens}:attempt{result.attempt}"
            except IrisError as exc:
                self.outcomes[i] = f"error:{exc.code.value}"

    async def under_way(self, fraction: float) -> None:
        async def enough_done() -> bool:
            return len(self.outcomes) >= self.total * fraction

        await eventually(enough_done, what=f"{fraction:.0%} of the load answered")

    async def finished(self) -> dict[int, str]:
        await asyncio.gather(*self._tasks)
        return self.outcomes
