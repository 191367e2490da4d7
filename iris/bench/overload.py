"""`iris bench overload`: twice the capacity offered in two priorities, and what priority preemption
keeps for the high one.

The stack is real (nats-server, broker, one 2-slot worker as processes; `max_concurrency = 2` as in the
seed). Requests are labelled as the reference labels them: a workload per tier with its priority, five
users per tier (`paid` priority 5: "high"; `open-source` priority 1: "low"). Capacity (requests/s) is
measured first, closed loop, on a stack of its own; arrivals are then open loop (Poisson) at `--load`
× that capacity, `--high-share` of it high and the rest low. Three phases, each on a fresh stack so no
queue, flow state or suspension carries over, with the same high arrival times in all three and the same
low ones in both loaded phases:
  * `unloaded` — the high arrivals alone: what high's queue wait is without the low load;
  * `off`      — high and low, preemption off (`preempt_ratio = 0`, the default);
  * `on`       — high and low, preemption on (`--preempt-ratio`, `--preempt-min-run`, ...).
Queue wait is the `Result`'s `timings.queued_ms` (the request stored in the stream → its worker started
it; a suspension later is not in it); the client's time to first chunk is reported beside it. Every
request has `--deadline` (the reference's queue timeout): the low queue stays bounded, its excess is
refused at once (`deadline_unmeetable`) or expires (`deadline_exceeded`), and both are counted. Reported
per phase and tier: p50/p99 queue wait and first chunk, outcomes, throughput; high's p99 loaded ÷
unloaded off vs on (acceptance: ≤ 1.2 with preemption on); suspensions and resumes from the worker's
heartbeats; finals counted per request id on the wire (every request must end with exactly one).
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgspec

from iris.bench.harness import percentiles, save_report
from iris.bench.seed.figures import MAX_INFLIGHT_S
from iris.bench.seed.run import seed_prompts
from iris.launch.nats_server import NatsServer
from iris.launch.processes import Process, spawn, stop_all, wait_for_model
from iris.sdk.client import Client
from schemas import headers as h
from schemas.errors import IrisError
from schemas.messages import Heartbeat, heartbeat_decoder
from schemas.reply_subjects import INBOX_PREFIX
from schemas.subjects import HEARTBEAT_FILTER

MAX_CONCURRENCY = 2
USERS_PER_TIER = 5
TIERS = {"high": ("paid", 5), "low": ("open-source", 1)}  # tier → (workload, priority)
PHASES = ("unloaded", "off", "on")
TARGET_RATIO = 1.2  # acceptance: high's p99 queue wait loaded ≤ 1.2 × unloaded with preemption on


@dataclass(frozen=True)
class OverloadOptions:
    engine: str = "fake"  # "fake" (FakeEngine at a fixed tokens/s) or "llama" (the embedded model)
    model: str | None = None  # llama: a GGUF file instead of the embedded model
    load: float = 2.0  # offered load ÷ measured capacity
    high_share: float = 0.25  # high's part of the offered load
    high_requests: int = 100  # high arrivals per phase: the phase lasts as long as they take to arrive
    max_tokens: int = 128
    fake_tps: float = 128.0  # FakeEngine tokens/s per sequence: an answer of 128 tokens takes 1 s
    deadline_s: float = 30.0  # every request's deadline (queue timeout), bounding the low queue
    preempt_ratio: float = 2.0  # phase `on`
    preempt_min_run_s: float = 0.05  # the broker's 1 s against 10-30 s answers, scaled to 1 s answers
    preempt_max_per_request: int = 1
    priority_mode: str = "share"
    capacity_requests: int = 16  # closed-loop requests that measure capacity
    seed: int = 7

    def worker_args(self) -> tuple[list[str], str]:
        slots = ["--slots", str(MAX_CONCURRENCY)]
        if self.engine == "fake":
            return [*slots, "--engine", "fake", "--model-name", "fake", "--fake-tps", str(self.fake_tps)], "fake"
        if self.model:
            name = Path(self.model).stem.replace(".", "-")[:60]
            return [*slots, "--model", self.model, "--model-name", name], name
        from gpu_worker.embedded_model import EMBEDDED_MODEL_NAME

        return slots, EMBEDDED_MODEL_NAME

    def broker_args(self, phase: str) -> list[str]:
        args = ["--policy", "wfq", "--max-concurrency", str(MAX_CONCURRENCY), "--priority-mode", self.priority_mode]
        args += ["--max-inflight", str(MAX_INFLIGHT_S)]
        if phase == "on":
            args += ["--preempt-ratio", str(self.preempt_ratio), "--preempt-min-run", str(self.preempt_min_run_s)]
            args += ["--preempt-max-per-request", str(self.preempt_max_per_request)]
        return args


@dataclass(frozen=True)
class Arrival:
    at_s: float  # since the phase's start
    tier: str
    user: str
    index: int  # its place among its tier's arrivals (and which prompt it asks)


def plan(rate_high: float, rate_low: float, n_high: int, seed: int) -> list[Arrival]:
    """Poisson arrivals: `n_high` high ones, and low ones over the time those take; each tier from its own
    random stream, so the high ones are the same whatever the low rate."""
    highs = _poisson(random.Random(seed), rate_high, n_high, float("inf"), "high")
    duration_s = highs[-1].at_s if highs else 0.0
    lows = _poisson(random.Random(seed + 1), rate_low, None, duration_s, "low") if rate_low > 0 else []
    return sorted(highs + lows, key=lambda a: a.at_s)


def _poisson(rng: random.Random, rate: float, n: int | None, until_s: float, tier: str) -> list[Arrival]:
    out: list[Arrival] = []
    at_s = 0.0
    while n is None or len(out) < n:
        at_s += rng.expovariate(rate)
        if at_s > until_s:
            break
        out.append(Arrival(at_s, tier, f"{TIERS[tier][0]}-{len(out) % USERS_PER_TIER + 1}", len(out)))
    return out


@dataclass
class Sample:
    tier: str
    user: str
    index: int
    planned_s: float
    submitted_s: float = 0.0
    outcome: str = "ok"  # or the error code
    queued_ms: float | None = None  # Result.timings.queued_ms
    first_chunk_ms: float | None = None  # client: submitted → first chunk
    latency_ms: float = 0.0
    completion_tokens: int = 0
    request_id: str = ""


def _prompt(prompts: list[str], arrival: Arrival) -> str:
    """High asks the even prompts, low the odd ones: the same prompt per arrival in every phase."""
    return prompts[(2 * arrival.index + (arrival.tier == "low")) % len(prompts)]


class WireTap:
    """What the phase's wire shows beside the client's view: finals (result or error replies) per request
    id on every inbox, and each worker's latest heartbeat (its suspensions and resumes)."""

    def __init__(self) -> None:
        self.finals: Counter[str] = Counter()
        self.beats: dict[str, Heartbeat] = {}
        self._final_seen = asyncio.Event()
        self._beat_seen = asyncio.Event()

    async def start(self, client: Client) -> None:
        await client.nc.subscribe(f"{INBOX_PREFIX}>", cb=self._on_reply)
        await client.nc.subscribe(HEARTBEAT_FILTER, cb=self._on_beat)
        await client.nc.flush()

    async def _on_reply(self, msg: Any) -> None:
        headers = msg.headers or {}
        if headers.get(h.KIND) in (h.KIND_RESULT, h.KIND_ERROR):
            self.finals[headers.get(h.REQUEST_ID, "")] += 1
            self._final_seen.set()

    async def _on_beat(self, msg: Any) -> None:
        beat = heartbeat_decoder.decode(msg.data)
        self.beats[beat.worker_id] = beat
        self._beat_seen.set()

    async def settled(self, request_ids: list[str], timeout_s: float = 10.0) -> None:
        """Until every request's final was seen here too (the tap reads them beside the SDK)."""
        give_up = time.monotonic() + timeout_s
        while any(self.finals[r] == 0 for r in request_ids) and (left_s := give_up - time.monotonic()) > 0:
            self._final_seen.clear()
            try:
                await asyncio.wait_for(self._final_seen.wait(), left_s)
            except TimeoutError:
                return

    async def fresh_beat(self, timeout_s: float = 10.0) -> None:
        """Until a heartbeat sent from now on came: its counts include the phase's last resumes."""
        since_ms = time.time() * 1000
        give_up = time.monotonic() + timeout_s
        while all(b.sent_ms < since_ms for b in self.beats.values()) and (left_s := give_up - time.monotonic()) > 0:
            self._beat_seen.clear()
            try:
                await asyncio.wait_for(self._beat_seen.wait(), left_s)
            except TimeoutError:
                return

    def suspensions(self) -> dict[str, Any]:
        beats = list(self.beats.values())
        resumes: Counter[str] = Counter()
        for beat in beats:
            resumes.update(beat.resumes)
        return {
            "suspensions": sum(b.suspensions for b in beats),
            "resumes": dict(resumes),
            "resume_ms_mean": round(max((b.resume_ms for b in beats), default=0.0), 3),
            "max_suspended": max((b.max_suspended for b in beats), default=0),
            "worker_tokens_per_s": round(sum(b.tokens_per_s for b in beats), 2),
        }


class Phase:
    """One fresh stack (nats-server, broker, one worker) and the client that drives it."""

    def __init__(self, name: str, options: OverloadOptions, workdir: Path) -> None:
        self.name, self.options, self.workdir = name, options, workdir
        self.worker_args, self.model = options.worker_args()
        self.server: NatsServer | None = None
        self.procs: list[Process] = []
        self.client: Client | None = None
        self.tap = WireTap()

    async def __aenter__(self) -> Phase:
        self.server = NatsServer(self.workdir / "nats").start()
        broker = spawn("broker", self.server.url, self.options.broker_args(self.name), self.workdir / "broker.log")
        worker = spawn("gpu_worker", self.server.url, self.worker_args, self.workdir / "worker.log")
        self.procs = [broker, worker]
        self.client = await Client.connect(self.server.url)
        await wait_for_model(self.client, self.model, self.procs)
        # One answer before the clock starts: the broker's start-up grace is over, the model warm.
        await self.client.complete("warm up", model=self.model, workload="warm-up", max_tokens=1, deadline_s=300)
        await self.tap.start(self.client)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.client is not None:
            await self.client.close()
        if self.server is not None:
            stop_all(self.procs, self.server)

    async def one(self, arrival: Arrival, start: float, prompts: list[str]) -> Sample:
        assert self.client is not None
        workload, priority = TIERS[arrival.tier]
        sample = Sample(arrival.tier, arrival.user, arrival.index, arrival.at_s, time.monotonic() - start)
        generation = self.client.generate(
            messages=[{"role": "user", "content": _prompt(prompts, arrival)}],
            model=self.model,
            workload=workload,
            priority=priority,
            user=arrival.user,
            deadline_s=self.options.deadline_s,
            max_tokens=self.options.max_tokens,
            temperature=0.0,
            seed=1,
        )
        submitted = time.monotonic()
        try:
            async for _ in generation:
                if sample.first_chunk_ms is None:
                    sample.first_chunk_ms = round((time.monotonic() - submitted) * 1000, 3)
            assert generation.result is not None
            sample.queued_ms = generation.result.timings.queued_ms
            sample.completion_tokens = generation.result.usage.completion_tokens
        except IrisError as exc:
            sample.outcome = exc.code.value
        sample.latency_ms = round((time.monotonic() - submitted) * 1000, 3)
        sample.request_id = generation.request_id or ""
        return sample

    async def drive(self, arrivals: list[Arrival], prompts: list[str]) -> list[Sample]:
        """Open loop: each request sent at its planned time, whatever the ones before it are doing."""
        tasks: list[asyncio.Task[Sample]] = []
        start = time.monotonic()
        for arrival in arrivals:
            delay_s = start + arrival.at_s - time.monotonic()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            tasks.append(asyncio.create_task(self.one(arrival, start, prompts)))
        samples = list(await asyncio.gather(*tasks))
        await self.tap.settled([s.request_id for s in samples])
        await self.tap.fresh_beat()
        return samples

    async def capacity(self, n: int, prompts: list[str]) -> float:
        """Served requests/s with both slots kept busy: 2 × max concurrency closed loops, low labels."""
        loops = 2 * MAX_CONCURRENCY
        per_loop = max(1, n // loops)
        start = time.monotonic()

        async def loop(k: int) -> list[Sample]:
            user = f"{TIERS['low'][0]}-{k + 1}"
            return [
                await self.one(Arrival(0.0, "low", user, k * per_loop + i), start, prompts) for i in range(per_loop)
            ]

        done = [s for samples in await asyncio.gather(*(loop(k) for k in range(loops))) for s in samples]
        served = sum(s.outcome == "ok" for s in done)
        if served == 0:
            raise RuntimeError(f"capacity: no request of {len(done)} served ({Counter(s.outcome for s in done)})")
        return served / (time.monotonic() - start)


def summarize(samples: list[Sample], finals: Counter[str]) -> dict[str, Any]:
    tiers: dict[str, Any] = {}
    for tier in TIERS:
        mine = [s for s in samples if s.tier == tier]
        if not mine:
            continue
        ok = [s for s in mine if s.outcome == "ok"]
        outcomes = Counter(s.outcome for s in mine)
        tiers[tier] = {
            "requests": len(mine),
            "completed": len(ok),
            "refused_unmeetable": outcomes.get("deadline_unmeetable", 0),
            "expired": outcomes.get("deadline_exceeded", 0),
            "outcomes": dict(outcomes),
            "queue_wait": percentiles([s.queued_ms / 1000 for s in ok if s.queued_ms is not None]) if ok else None,
            "first_chunk": percentiles([s.first_chunk_ms / 1000 for s in ok if s.first_chunk_ms is not None])
            if ok
            else None,
            "tokens": sum(s.completion_tokens for s in ok),
        }
    began = min(s.submitted_s for s in samples)
    ended = max(s.submitted_s + s.latency_ms / 1000 for s in samples)
    completed = [s for s in samples if s.outcome == "ok"]
    per_request = Counter(finals[s.request_id] for s in samples)
    return {
        "tiers": tiers,
        "elapsed_s": round(ended - began, 3),
        "completed_per_s": round(len(completed) / max(ended - began, 1e-9), 3),
        "tokens_per_s": round(sum(s.completion_tokens for s in completed) / max(ended - began, 1e-9), 2),
        "finals_per_request": {str(k): v for k, v in sorted(per_request.items())},
        "late_sends_max_ms": round(max(s.submitted_s - s.planned_s for s in samples) * 1000, 3),
    }


async def measure_capacity(options: OverloadOptions, prompts: list[str]) -> float:
    with tempfile.TemporaryDirectory(prefix="iris-overload-capacity-") as tmp:
        async with Phase("capacity", options, Path(tmp)) as phase:
            return await phase.capacity(options.capacity_requests, prompts)


async def run_phase(
    name: str, arrivals: list[Arrival], options: OverloadOptions, prompts: list[str]
) -> tuple[dict[str, Any], list[Sample]]:
    with tempfile.TemporaryDirectory(prefix=f"iris-overload-{name}-") as tmp:
        async with Phase(name, options, Path(tmp)) as phase:
            samples = await phase.drive(arrivals, prompts)
            summary = summarize(samples, phase.tap.finals)
            summary["worker"] = phase.tap.suspensions()
            return summary, samples


def _ratio(phases: dict[str, Any], phase: str, figure: str) -> float | None:
    unloaded = phases["unloaded"]["tiers"]["high"]["queue_wait"]
    loaded = phases[phase]["tiers"]["high"]["queue_wait"]
    if not unloaded or not loaded or unloaded[figure] <= 0:
        return None
    return round(float(loaded[figure]) / float(unloaded[figure]), 3)


async def run_overload_bench(options: OverloadOptions, out: Path) -> dict[str, Any]:
    prompts = seed_prompts()
    print("overload: measuring capacity (closed loop) ...", flush=True)
    capacity = await measure_capacity(options, prompts)
    rate_high = options.load * options.high_share * capacity
    rate_low = options.load * (1 - options.high_share) * capacity
    arrivals = plan(rate_high, rate_low, options.high_requests, options.seed)
    phases: dict[str, Any] = {}
    samples: dict[str, list[dict[str, Any]]] = {}
    for name in PHASES:
        mine = [a for a in arrivals if a.tier == "high"] if name == "unloaded" else arrivals
        print(f"overload: phase {name} ({len(mine)} requests over {arrivals[-1].at_s:.0f} s) ...", flush=True)
        phases[name], phase_samples = await run_phase(name, mine, options, prompts)
        samples[name] = [asdict(s) for s in phase_samples]
    report = _report(options, capacity, rate_high, rate_low, arrivals, phases)
    report["samples"] = samples
    print_report(report)
    return save_report(report, out)


def _report(
    options: OverloadOptions,
    capacity: float,
    rate_high: float,
    rate_low: float,
    arrivals: list[Arrival],
    phases: dict[str, Any],
) -> dict[str, Any]:
    ratios = {p: {f: _ratio(phases, p, f) for f in ("p50_ms", "p99_ms")} for p in ("off", "on")}
    on_ratio = ratios["on"]["p99_ms"]
    return {
        "bench": "overload",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "setup": {**asdict(options), "max_concurrency": MAX_CONCURRENCY, "tiers": TIERS},
        "queue_wait_is": "Result.timings.queued_ms: stored in the stream -> its worker started it",
        "capacity_requests_per_s": round(capacity, 3),
        "offered_per_s": {"high": round(rate_high, 3), "low": round(rate_low, 3)},
        "duration_s": round(arrivals[-1].at_s, 3) if arrivals else 0.0,
        "phases": phases,
        "high_queue_wait_ratio": ratios,
        "verdict": {
            "high_p99_on_within_target": on_ratio is not None and on_ratio <= TARGET_RATIO,
            "target_ratio": TARGET_RATIO,
            "low_never_starved": all(phases[p]["tiers"]["low"]["completed"] > 0 for p in ("off", "on")),
            "one_final_per_request": all(set(phases[p]["finals_per_request"]) == {"1"} for p in PHASES),
        },
    }


def print_report(report: dict[str, Any]) -> None:
    offered = report["offered_per_s"]
    print(
        f"capacity {report['capacity_requests_per_s']} requests/s; offered high {offered['high']}/s + low "
        f"{offered['low']}/s for {report['duration_s']} s"
    )
    print(f"{'phase':9} {'tier':5} {'done':>5} {'refused':>7} {'expired':>7} {'wait p50':>9} {'wait p99':>9} "
          f"{'1st p99':>8}  req/s  suspended resumed")  # fmt: skip
    for name, phase in report["phases"].items():
        for tier, row in phase["tiers"].items():
            wait, first = row["queue_wait"] or {}, row["first_chunk"] or {}
            print(
                f"{name:9} {tier:5} {row['completed']:5} {row['refused_unmeetable']:7} {row['expired']:7} "
                f"{wait.get('p50_ms', 0):7.0f}ms {wait.get('p99_ms', 0):7.0f}ms {first.get('p99_ms', 0):6.0f}ms "
                f"{phase['completed_per_s']:6.2f} {phase['worker']['suspensions']:9} "
                f"{sum(phase['worker']['resumes'].values()):7}"
            )
    ratios = report["high_queue_wait_ratio"]
    print(
        f"high p99 queue wait loaded/unloaded: off {ratios['off']['p99_ms']}, on {ratios['on']['p99_ms']} "
        f"(target <= {TARGET_RATIO}); p50: off {ratios['off']['p50_ms']}, on {ratios['on']['p50_ms']}"
    )
    print(f"verdict: {msgspec.json.encode(report['verdict']).decode()}")


def main(options: OverloadOptions, out: Path) -> None:
    asyncio.run(run_overload_bench(options, out))
