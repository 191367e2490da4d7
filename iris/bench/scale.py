"""`iris bench scale`: does a decision cost the same with one worker or 10,000?

One phase per fleet size, each on a fresh nats-server and a fresh broker process, in one run: a single
worker first, then fleets of simulated workers (`iris.bench.scale_fleet`: zero-time workers that heartbeat,
answer offers, publish results and lease ends as a FakeEngine worker does), all of one model. Per phase:
  * idle: the fleet heartbeats with nothing to do; broker CPU in % of a core (from /proc/<pid>/stat);
  * a standing backlog of one-token requests is published while the fleet drains (so it waits), the
    broker's RSS is read once all are indexed, then the fleet serves: dispatches per second between the
    10th and the 80th percentile of completions, and broker CPU seconds per request over that window.
Ratios are against the single worker of the same run.
"""

from __future__ import annotations

import asyncio
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from nats.errors import TimeoutError as NatsTimeout

from iris.bench.harness import rss_mb, save_report
from iris.bench.scale_fleet import SimFleet, publish_backlog
from iris.bench.scheduler import wait_indexed
from iris.launch.nats_server import NatsServer
from iris.launch.processes import Process, kill_all, spawn
from schemas.subjects import BROKER_STATS_SUBJECT

MODEL = "scale"
# One Python process beats and answers for the whole fleet, and the bench runs at the lowest CPU priority on
# a shared machine: late heartbeats, answers and renewals must not count as lost workers or a lost lead.
WORKER_TIMEOUT_S = 10.0
LEADER_TTL_S = 10.0
TARGET_RATIO_1K, TARGET_RATIO_10K, TARGET_CPU_RATIO_1K = 0.9, 0.8, 1.2
TARGET_IDLE_CORE_1K, TARGET_RSS_MB = 0.05, 250


@dataclass(frozen=True)
class Phase:
    workers: int
    slots: int
    backlog: int  # requests waiting when the fleet starts to serve
    measured: int  # completions the rate is measured over (from the start of serving)
    idle_s: float


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuSampler:
    """Processes' CPU seconds every 50 ms, to read them at any moment of the run afterwards."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.samples.append((time.perf_counter(), {name: cpu_s(pid) for name, pid in self.pids.items()}))
            await asyncio.sleep(0.05)

    def at(self, when: float, name: str = "broker") -> float:
        return next((cpu for t, cpu in self.samples if t >= when), self.samples[-1][1])[name]

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def wait_leading(nc: nats.NATS, broker: Process, timeout_s: float = 300.0) -> None:
    """Until the broker publishes stats: it leads and schedules. It fails at once if the broker exits."""
    sub = await nc.subscribe(BROKER_STATS_SUBJECT)
    end = time.monotonic() + timeout_s
    try:
        while time.monotonic() < end:
            if broker.poll() is not None:
                raise RuntimeError(f"the broker exited while starting: {' '.join(map(str, broker.args))}")
            try:
                await sub.next_msg(timeout=1.0)
                return
            except NatsTimeout:
                continue
        raise TimeoutError(f"the broker published no stats within {timeout_s} s")
    finally:
        await sub.unsubscribe()


async def idle_core(pid: int, seconds: float) -> float:
    start_t, start_cpu = time.perf_counter(), cpu_s(pid)
    await asyncio.sleep(seconds)
    return (cpu_s(pid) - start_cpu) / (time.perf_counter() - start_t)


async def run_phase(workdir: Path, phase: Phase, heartbeat_s: float) -> dict[str, Any]:
    server = NatsServer(workdir / f"nats-{phase.workers}").start()
    procs: list[Process] = []
    fleet = SimFleet(server.url, MODEL, phase.workers, phase.slots, heartbeat_s)
    result: dict[str, Any] = {"workers": phase.workers, "slots": phase.slots, "backlog": phase.backlog}
    try:
        config = workdir / f"broker-{phase.workers}.toml"
        config.write_text("[broker]\nworkload_weights = { default = 1.0 }\n")  # in the stats while only queued
        args = ["--config", str(config), "--worker-timeout", str(WORKER_TIMEOUT_S)]
        args += ["--offer-timeout", str(WORKER_TIMEOUT_S), "--leader-ttl", str(LEADER_TTL_S)]
        args += ["--max-msgs", str(10 * phase.backlog + 10_000)]
        procs.append(spawn("broker", server.url, args, workdir / f"broker-{phase.workers}.log"))
        nc = await nats.connect(server.url, name="iris-bench-scale")
        await wait_leading(nc, procs[0])
        _step(phase, "broker leading")
        await fleet.start()
        pid = procs[0].pid
        await asyncio.sleep(2 * heartbeat_s)  # every worker heard
        if phase.idle_s:
            fleet.serve()
            await asyncio.sleep(1.5 * heartbeat_s)  # every worker's beat says it serves
            result["idle_core"] = round(await idle_core(pid, phase.idle_s), 4)
            fleet.draining = True
            await asyncio.sleep(1.5 * heartbeat_s)
        _step(phase, "publishing the backlog")
        await publish_backlog(nc, MODEL, phase.backlog)
        await wait_indexed(nc, MODEL, phase.backlog, 900)
        _step(phase, "backlog indexed")
        result["broker_rss_waiting_mb"] = round(rss_mb(pid), 1)
        assert server.process is not None
        sampler = CpuSampler({"broker": pid, "nats": server.process.pid, "fleet": os.getpid()})
        fleet.serve()
        await _until(lambda: fleet.completed >= phase.measured, 600, "completions")
        await sampler.stop()
        low, high = phase.measured // 10, phase.measured * 8 // 10
        rate, start, end = fleet.rate_between(low, high)
        done = next(c for _, c in fleet.completions if c >= high) - next(c for _, c in fleet.completions if c >= low)
        result["dispatch_per_s"] = round(rate, 1)
        result["broker_cpu_ms_per_request"] = round(1000 * (sampler.at(end) - sampler.at(start)) / done, 4)
        result["broker_core_while_dispatching"] = round((sampler.at(end) - sampler.at(start)) / (end - start), 3)
        for name in ("nats", "fleet"):  # where the rest of the machine's CPU went (the fleet: this process)
            spent = sampler.at(end, name) - sampler.at(start, name)
            result[f"{name}_cpu_ms_per_request"] = round(1000 * spent / done, 4)
        result["broker_rss_end_mb"] = round(rss_mb(pid), 1)
        await nc.close()
    finally:
        await fleet.stop()
        kill_all(procs)
        server.stop()
    return result


def _step(phase: Phase, what: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {phase.workers} workers: {what}", file=sys.stderr, flush=True)


async def _until(check: Any, timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > end:
            raise TimeoutError(f"{what} not reached within {timeout_s} s")
        await asyncio.sleep(0.05)


async def run_scale_bench(
    fleets: list[int], slots: int, single_slots: int, backlog: int, waiting: int, idle_s: float, out: Path
) -> dict[str, Any]:
    """The single worker, then each fleet; the largest fleet has `waiting` requests queued (its RSS)."""
    phases = [Phase(1, single_slots, backlog, backlog, idle_s)]
    for n in fleets:
        depth = waiting if n == max(fleets) else backlog
        phases.append(Phase(n, slots, depth, backlog, idle_s if n <= 1000 else 0.0))
    report: dict[str, Any] = {
        "bench": "scale",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "heartbeat_s": 1.0,
        "worker_timeout_s": WORKER_TIMEOUT_S,
        "leader_ttl_s": LEADER_TTL_S,
        "phases": [],
    }
    with tempfile.TemporaryDirectory(prefix="iris-scale-") as tmp:
        for phase in phases:
            figures = await run_phase(Path(tmp), phase, 1.0)
            report["phases"].append(figures)
            print(_line(figures), flush=True)
    _judge(report)
    return save_report(report, out)


def _line(f: dict[str, Any]) -> str:
    idle = f" idle {100 * f['idle_core']:.1f}% of a core," if "idle_core" in f else ""
    return (
        f"{f['workers']:>6} workers x {f['slots']} slots:{idle} {f['dispatch_per_s']:>8.1f} dispatches/s, "
        f"broker {f['broker_cpu_ms_per_request']:.3f} ms CPU/request ({100 * f['broker_core_while_dispatching']:.0f}% "
        f"of a core; nats-server {f['nats_cpu_ms_per_request']:.3f}, fleet {f['fleet_cpu_ms_per_request']:.3f}), "
        f"RSS {f['broker_rss_waiting_mb']} MB with {f['backlog']} waiting"
    )


def _judge(report: dict[str, Any]) -> None:
    """Ratios to the single worker, and each acceptance target beside its figure."""
    single, *fleets = report["phases"]
    checks: dict[str, Any] = {}
    for f in fleets:
        n = f["workers"]
        f["dispatch_ratio"] = round(f["dispatch_per_s"] / single["dispatch_per_s"], 3)
        f["cpu_per_request_ratio"] = round(f["broker_cpu_ms_per_request"] / single["broker_cpu_ms_per_request"], 3)
        target = TARGET_RATIO_1K if n <= 1000 else TARGET_RATIO_10K
        checks[f"dispatch_ratio_{n}"] = {"value": f["dispatch_ratio"], "target_min": target}
        if n <= 1000:
            checks[f"cpu_per_request_ratio_{n}"] = {
                "value": f["cpu_per_request_ratio"],
                "target_max": TARGET_CPU_RATIO_1K,
            }
        if "idle_core" in f:
            checks[f"idle_core_{n}"] = {"value": f["idle_core"], "target_max": TARGET_IDLE_CORE_1K}
        ratios = f"dispatch {f['dispatch_ratio']:.2f}x, CPU/request {f['cpu_per_request_ratio']:.2f}x"
        print(f"{n:>6} workers: {ratios} the single worker")
    largest = max(fleets, key=lambda f: f["workers"], default=None)
    if largest is not None:
        key = f"rss_mb_{largest['workers']}_workers_{largest['backlog']}_waiting"
        checks[key] = {"value": largest["broker_rss_waiting_mb"], "target_max": TARGET_RSS_MB}
    for check in checks.values():
        low, high = check.get("target_min", float("-inf")), check.get("target_max", float("inf"))
        check["met"] = low <= check["value"] <= high
    report["checks"] = checks


async def run_takeover_bench(waiting: int, workers: int, slots: int, read_ahead: bool, out: Path) -> dict[str, Any]:
    from iris.bench.scale_takeover import print_takeover, run_takeover

    with tempfile.TemporaryDirectory(prefix="iris-takeover-") as tmp:
        figures = await run_takeover(Path(tmp), waiting, workers, slots, read_ahead)
    report = {"bench": "scale-takeover", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **figures}
    print_takeover(report)
    return save_report(report, out)


def run_core_bench(fleets: list[int], slots: int, single_slots: int, waiting: int, out: Path) -> dict[str, Any]:
    from iris.bench.scale_core import run_core_bench as rows_of

    report = {
        "bench": "scale-core",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": rows_of(fleets, slots, single_slots, waiting),
    }
    return save_report(report, out)
