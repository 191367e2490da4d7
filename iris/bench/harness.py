"""What several benchmarks share: latency percentiles (and what one arm adds over another), timing a call
n times, a process's RSS, counting replies on an inbox, waiting for an HTTP server and saving the report.
The service processes themselves are started by `iris.launch.processes`."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import nats


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ordered = sorted(samples_s)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    return {
        "p50_ms": round(pick(0.50), 3),
        "p99_ms": round(pick(0.99), 3),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
    }


def added_latency(base: str, base_s: list[float], arm: str, arm_s: list[float]) -> dict[str, Any]:
    """Percentiles of two arms timed alike, and what the second adds over the first at p50 and p99."""
    base_p, arm_p = percentiles(base_s), percentiles(arm_s)
    return {
        "requests": len(arm_s),
        base: base_p,
        arm: arm_p,
        "added_p50_ms": round(arm_p["p50_ms"] - base_p["p50_ms"], 3),
        "added_p99_ms": round(arm_p["p99_ms"] - base_p["p99_ms"], 3),
    }


async def time_calls(n: int, call: Callable[[int], Awaitable[float | None]], warmup: int) -> list[float]:
    """Run `call` n times after a warm-up; a call may return its own measured seconds (e.g. to first token)."""
    for i in range(warmup):
        await call(i)
    samples = []
    for i in range(n):
        start = time.perf_counter()
        measured = await call(i)
        samples.append(time.perf_counter() - start if measured is None else measured)
    return samples


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class ReplyCounter:
    """Counts replies of one kind on an inbox. `subscribe` before publishing: a reply that comes before
    the subscription is gone (the broker answers a queued request within a millisecond)."""

    def __init__(self, nc: nats.NATS, inbox: str, kind: str, n: int) -> None:
        self.nc, self.inbox, self.kind, self.n = nc, inbox, kind, n
        self.seen = 0
        self.first = self.last = 0.0
        self._done = asyncio.Event()
        self._sub: Any = None

    async def subscribe(self) -> ReplyCounter:
        self._sub = await self.nc.subscribe(self.inbox, cb=self._on_reply)
        await self.nc.flush()  # the server has the subscription before anything is published
        return self

    async def _on_reply(self, msg: Any) -> None:
        if (msg.headers or {}).get("Iris-Kind") == self.kind:
            self.seen += 1
            self.last = time.perf_counter()
            self.first = self.first or self.last
            if self.seen >= self.n:
                self._done.set()

    async def wait(self, timeout_s: float) -> tuple[float, float]:
        """Until all n came: when the first and the last arrived (perf_counter)."""
        try:
            await asyncio.wait_for(self._done.wait(), timeout_s)
        except TimeoutError:
            raise TimeoutError(f"only {self.seen} of {self.n} {self.kind!r} replies within {timeout_s} s") from None
        finally:
            await self._sub.unsubscribe()
        return self.first, self.last


async def wait_http(base_url: str, path: str = "/readyz", timeout_s: float = 60.0) -> None:
    """Until `GET base_url + path` answers 200 (a gateway's `/readyz`, an upstream's `/v1/models`)."""
    async with httpx.AsyncClient(base_url=base_url) as http:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            try:
                if (await http.get(path)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{base_url}{path} not ready within {timeout_s} s")


def save_report(report: dict[str, Any], out: Path) -> dict[str, Any]:
    """Write the figures as JSON to `out` (its folder made if needed) and say where."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"saved {out}")
    return report
