"""What a phase sends: the bench's options, the tiers and their labels, the open-loop arrival plan, and
one request's sample as the client saw it."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from iris.bench.seed.figures import MAX_INFLIGHT_S

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
    max_tokens: int = 64
    fake_tps: float = 64.0  # FakeEngine tokens/s per sequence: an answer of 64 tokens takes 1 s
    deadline_s: float = 30.0  # every request's deadline (queue timeout), bounding the low queue
    preempt_ratio: float = 2.0  # phase `on`
    preempt_min_run_s: float = 0.05  # the broker's 1 s against 10-30 s answers, scaled to 1 s answers
    preempt_max_per_request: int = 3  # the broker's default
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
    outcome: str = "ok"  # or the error code, or "cut_<finish reason>": a result cut short (at its deadline)
    queued_ms: float | None = None  # Result.timings.queued_ms
    first_chunk_ms: float | None = None  # client: submitted → first chunk
    latency_ms: float = 0.0
    completion_tokens: int = 0
    request_id: str = ""
