"""What the status page costs the gateway, for `iris bench gateway --status-viewers N`.

Three measures, because on a shared 2-core machine a throughput difference under 1% is far inside the
noise of two load runs:
  * throughput segments without and with N viewers reading `/status/events` as a browser does, in ABBA
    order, with the gateway process's CPU seconds per 1000 requests in each (what the issue asks for);
  * the gateway process's CPU per second while idle, without and with the viewers: all the page's work
    (stats decoding, one snapshot a second, the writes) and nothing else, set against the CPU the gateway
    spends per second at full load: that ratio is the share of throughput the page takes;
  * one update's cost in-process (the board fed one `BrokerStats` of 16 workloads with 20 rejections and
    8 workers, then one snapshot built and encoded), timed over many updates.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from gateway.http.status.board import StatusBoard
from gateway.http.status.hub import frame
from gateway.metrics import Refusal
from schemas.messages import BrokerStats, Heartbeat, RejectionNote, WorkloadStats

TARGET_COST_PERCENT = 1.0
IDLE_S = 20.0
Throughput = Callable[[str, int, float], Awaitable[dict[str, Any]]]


class StatusViewers:
    """`count` event-stream readers of `/status/events` (a browser's EventSource), counting snapshots."""

    def __init__(self, base_url: str, count: int) -> None:
        self.base_url, self.count = base_url, count
        self.snapshots = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> StatusViewers:
        self._session = aiohttp.ClientSession(self.base_url, timeout=aiohttp.ClientTimeout(None))
        self._tasks = [asyncio.create_task(self._read(self._session)) for _ in range(self.count)]
        return self

    async def _read(self, session: aiohttp.ClientSession) -> None:
        async with session.get("/status/events", headers={"Accept": "text/event-stream"}) as response:
            response.raise_for_status()
            async for line in response.content:
                self.snapshots += line.startswith(b"event: snapshot")

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _segment(
    base_url: str, pid: int, throughput: Throughput, clients: int, seconds: float, viewers: int
) -> dict[str, Any]:
    cpu_before = cpu_s(pid)
    if viewers:
        async with StatusViewers(base_url, viewers) as readers:
            run = await throughput(base_url, clients, seconds)
        snapshots = readers.snapshots
    else:
        run, snapshots = await throughput(base_url, clients, seconds), 0
    return {
        "viewers": viewers,
        "requests_per_s": run["requests_per_s"],
        "errors": run["errors"],
        "snapshots_read": snapshots,
        "gateway_cpu_s_per_1000_requests": round((cpu_s(pid) - cpu_before) / max(1, run["completed"]) * 1000, 4),
    }


async def _idle_cpu_per_s(base_url: str, pid: int, viewers: int, seconds: float) -> float:
    async def sit() -> float:
        before, started = cpu_s(pid), time.monotonic()
        await asyncio.sleep(seconds)
        return (cpu_s(pid) - before) / (time.monotonic() - started)

    if not viewers:
        return await sit()
    async with StatusViewers(base_url, viewers):
        return await sit()


def update_cost_ms(updates: int = 2000) -> float:
    """One update in-process: a `BrokerStats` of 16 workloads into the board, one snapshot built and encoded."""
    board = StatusBoard()
    rows = [WorkloadStats("m", f"w{i}", 40, 2, 1.0, 0.06, 0.06, 1.5, 4.0, 30) for i in range(16)]
    notes = [RejectionNote(i, "m", "w1", "queue_full", f"workload 'w{i}' already has 40 waiting") for i in range(20)]
    beats = [(0.0, Heartbeat(f"worker-{i}", "m", 4, 0, [1, 2, 3, 4], 60.0, 0)) for i in range(8)]
    refusals = [Refusal(i, "openai", "/v1/chat/completions", 429, "rate_limited", "slow down") for i in range(20)]
    started = time.perf_counter()
    for i in range(updates):
        board.on_stats(BrokerStats("b", i * 1000, "wfq", 60.0, rows, notes), float(i), ["m"])
        frame("snapshot", board.snapshot(float(i), i * 1000, beats, refusals))
    return (time.perf_counter() - started) / updates * 1000


async def status_cost(
    base_url: str, pid: int, throughput: Throughput, clients: int, seconds: float, viewers: int
) -> dict[str, Any]:
    segments = [await _segment(base_url, pid, throughput, clients, seconds, v) for v in (0, viewers, viewers, 0)]
    idle_without = await _idle_cpu_per_s(base_url, pid, 0, IDLE_S)
    idle_with = await _idle_cpu_per_s(base_url, pid, viewers, IDLE_S)

    def mean(watched: bool, field: str) -> float:
        values = [s[field] for s in segments if bool(s["viewers"]) == watched]
        return sum(values) / len(values)

    without, with_viewers = mean(False, "requests_per_s"), mean(True, "requests_per_s")
    cpu_without, cpu_with = (
        mean(False, "gateway_cpu_s_per_1000_requests"),
        mean(True, "gateway_cpu_s_per_1000_requests"),
    )
    busy_cpu_per_s = cpu_without / 1000 * without  # what the gateway burns per second at full load
    page_cpu_per_s = max(0.0, idle_with - idle_without)
    return {
        "viewers": viewers,
        "segment_s": seconds,
        "segments": segments,
        "requests_per_s_without": round(without, 1),
        "requests_per_s_with": round(with_viewers, 1),
        "throughput_cost_percent": round((1 - with_viewers / without) * 100, 2),
        "cpu_per_request_cost_percent": round((cpu_with / cpu_without - 1) * 100, 2),
        "idle_cpu_per_s": {"without": round(idle_without, 5), "with": round(idle_with, 5), "seconds": IDLE_S},
        "gateway_cpu_per_s_at_load": round(busy_cpu_per_s, 4),
        "page_share_of_load_cpu_percent": round(page_cpu_per_s / busy_cpu_per_s * 100, 3) if busy_cpu_per_s else None,
        "update_cost_ms": round(update_cost_ms(), 4),
        "target_cost_percent": TARGET_COST_PERCENT,
    }


def print_status_cost(status: dict[str, Any]) -> None:
    print(f"status page: {status['viewers']} viewer(s) on /status/events, segments of {status['segment_s']} s (ABBA)")
    for segment in status["segments"]:
        cpu = segment["gateway_cpu_s_per_1000_requests"]
        print(
            f"  viewers {segment['viewers']}: {segment['requests_per_s']:>8} requests/s, gateway CPU"
            f" {cpu:.3f} s per 1000 requests, {segment['snapshots_read']} snapshots read"
        )
    idle = status["idle_cpu_per_s"]
    print(
        f"  A/B under load: throughput {status['throughput_cost_percent']}%, gateway CPU per request"
        f" {status['cpu_per_request_cost_percent']}%"
    )
    print(
        f"  idle gateway CPU {idle['without'] * 1000:.2f} ms/s without, {idle['with'] * 1000:.2f} ms/s with the"
        f" viewers; the page's share of the gateway's CPU at load: {status['page_share_of_load_cpu_percent']}%"
        f"   target < {status['target_cost_percent']}%"
    )
    print(f"  one update in-process (16 workloads, 8 workers, 40 rejections): {status['update_cost_ms']} ms")
