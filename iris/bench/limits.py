"""`iris bench limits`: what `limit_by` costs the scheduler, and what an admission ticket costs an app.

* pure scheduler, no I/O: dispatch decisions per second with a deep backlog (one user flooding the
  head of the queue while at its cap, many others waiting), per policy, without and with
  `limit_by = "user"`: the price of looking past requests that may only borrow;
* admission through a real nats-server and broker process: admit → ticket → release round trips one
  at a time (latency percentiles), and tickets per second with many apps in closed loops.
"""

from __future__ import annotations

import asyncio
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from broker.core.limits import SchedulerLimits
from broker.core.queue import WaitingRequest
from broker.core.scheduler import Scheduler
from iris.bench.harness import percentiles, save_report
from iris.launch.nats_server import NatsServer
from iris.launch.processes import spawn, stop_all
from iris.sdk.client import Client
from schemas.messages import Heartbeat

SLOTS = 8
FAR_MS = 10**13


def dispatch_rate(policy: str, limit_by: str, n_waiting: int, n_decisions: int) -> float:
    """Decisions per second: end one lease, dispatch one, with `n_waiting` requests queued."""
    limits = SchedulerLimits(policy=policy, limit_by=limit_by, limit_per_value=1 if limit_by else 0)  # type: ignore[arg-type]
    scheduler = Scheduler(limits, 0)
    now = limits.startup_grace_ms
    scheduler.heartbeat(Heartbeat("w", "m", SLOTS, SLOTS, [], 0.0, now), now)
    flood = n_waiting // 2
    for seq in range(1, n_waiting + 1):
        user = "flood" if seq <= flood else f"u{seq % 500}"
        request = WaitingRequest(seq, f"r{seq}", "m", "default", "_INBOX.x", FAR_MS, 0, 1, user, 100)
        scheduler.enqueue(request, now)
    running = [lease.stream_seq for lease in scheduler.dispatch(now).offers]
    start = time.perf_counter()
    for _ in range(n_decisions):
        scheduler.lease_ended(running.pop(0), now)
        running += [lease.stream_seq for lease in scheduler.dispatch(now).offers]
    return n_decisions / (time.perf_counter() - start)


async def admission_round_trips(client: Client, n: int) -> tuple[list[float], list[float]]:
    acquire_s, release_s = [], []
    for _ in range(n):
        admission = client.admit(model="app", user="bench")
        start = time.perf_counter()
        await admission.acquire()
        acquired = time.perf_counter()
        await admission.release()
        acquire_s.append(acquired - start)
        release_s.append(time.perf_counter() - acquired)
    return acquire_s, release_s


async def tickets_per_s(client: Client, apps: int, duration_s: float) -> float:
    granted = 0
    end = time.monotonic() + duration_s

    async def app(index: int) -> None:
        nonlocal granted
        while time.monotonic() < end:
            async with client.admit(model="app", user=f"app{index}"):
                granted += 1

    start = time.perf_counter()
    await asyncio.gather(*(app(i) for i in range(apps)))
    return granted / (time.perf_counter() - start)


async def admission_part(workdir: Path, n: int, apps: int, duration_s: float) -> dict[str, Any]:
    config = workdir / "iris.toml"
    config.write_text(f"[broker.models.app]\nmax_concurrency = {SLOTS}\n")
    server = NatsServer(workdir / "nats").start()
    procs = [spawn("broker", server.url, ["--config", str(config)], workdir / "broker.log")]
    try:
        async with await Client.connect(server.url) as client:
            async with client.admit(model="app", deadline_s=30):
                pass  # the broker is up and past its start-up grace
            acquire_s, release_s = await admission_round_trips(client, n)
            rate = await tickets_per_s(client, apps, duration_s)
    finally:
        stop_all(procs, server)
    return {
        "round_trips": n,
        "acquire_ms": percentiles(acquire_s),
        "release_ms": percentiles(release_s),
        "apps": apps,
        "slots": SLOTS,
        "tickets_per_s": round(rate, 1),
    }


async def run_limits_bench(n_waiting: int, n_decisions: int, n_round_trips: int, apps: int, out: Path) -> None:
    report: dict[str, Any] = {
        "bench": "limits",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform()},
        "waiting": n_waiting,
        "dispatch_per_s": {},
    }
    print(f"pure scheduler, {n_waiting} waiting (half of them one user at its cap), {SLOTS} slots:")
    for policy in ("wfq", "fifo"):
        for limit_by in ("", "user"):
            rate = dispatch_rate(policy, limit_by, n_waiting, n_decisions)
            report["dispatch_per_s"][f"{policy} limit_by={limit_by or 'none'}"] = round(rate, 1)
            print(f"  {policy:4} limit_by={limit_by or 'none':5} {rate:>12.1f} decisions/s")
    with tempfile.TemporaryDirectory(prefix="iris-limits-") as tmp:
        report["admission"] = admission = await admission_part(Path(tmp), n_round_trips, apps, 5.0)
    print(f"admission, one at a time ({n_round_trips}): acquire {admission['acquire_ms']} ms")
    print(f"                                  release {admission['release_ms']} ms")
    print(f"admission, {apps} apps in closed loops on {SLOTS} slots: {admission['tickets_per_s']} tickets/s")
    save_report(report, out)
