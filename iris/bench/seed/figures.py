"""The seed experiment's figures from its samples: per arm and tier latency percentiles and throughput
(`summarize`), and the acceptance verdict of an Iris arm against FIFO and paid-alone (`verdict`)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

TIERS = (("paid", 5), ("open-source", 1))
ARMS = ("fifo", "iris", "iris-preempt", "paid-alone")
QUEUE_TIMEOUT_S = 120.0
MAX_INFLIGHT_S = 60.0


@dataclass(frozen=True)
class Sample:
    arm: str
    tier: str
    user: str
    index: int
    submitted_s: float
    latency_s: float
    completion_tokens: int
    outcome: str  # "ok" or the Iris error code
    run: int = 0  # which repeat of the arm


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _makespan(samples: list[Sample]) -> float:
    return max(s.submitted_s + s.latency_s for s in samples) - min(s.submitted_s for s in samples)


def summarize(samples: list[Sample]) -> dict[str, Any]:
    """Per arm: per tier p50/p90/max latency and outcomes; throughput over the arm's makespan."""
    out: dict[str, Any] = {}
    for arm in ARMS:
        mine = [s for s in samples if s.arm == arm]
        if not mine:
            continue
        runs = sorted({s.run for s in mine})
        per_run = {r: [s for s in mine if s.run == r] for r in runs}
        spans = {r: _makespan(xs) for r, xs in per_run.items()}
        makespan = sum(spans.values())  # repeats add up: throughput is all their work over all their time
        ok = [s for s in mine if s.outcome == "ok"]
        tiers = {}
        for tier, _ in TIERS:
            lat = [s.latency_s for s in ok if s.tier == tier]
            rejected = [s.outcome for s in mine if s.tier == tier and s.outcome != "ok"]
            if lat or rejected:
                tiers[tier] = {
                    "completed": len(lat),
                    "rejected": {code: rejected.count(code) for code in sorted(set(rejected))},
                    "p50_s": round(_pct(lat, 0.5), 2),
                    "p90_s": round(_pct(lat, 0.9), 2),
                    "max_s": round(max(lat), 2) if lat else float("nan"),
                    "mean_s": round(statistics.fmean(lat), 2) if lat else float("nan"),
                }
        out[arm] = {
            "requests": len(mine),
            "makespan_s": round(makespan, 2),
            "requests_per_s": round(len(ok) / makespan, 4),
            "tokens_per_s": round(sum(s.completion_tokens for s in ok) / makespan, 2),
            "runs": [
                {"run": r, "makespan_s": round(spans[r], 2), "requests_per_s": round(len(per_run[r]) / spans[r], 4)}
                for r in runs
            ],
            "tiers": tiers,
        }
    return out


# Paid's fluid ideal in the closed loop: under 5:1 shares it holds 5/6 of the slots while both tiers wait,
# so its cycle is 1/(5/6) = 1.2x paid-alone's and 0.6x FIFO's (half the users, 5/6 of the slots); strict
# priority gives paid every slot (1.0x alone, 0.5x FIFO). The targets leave room for a non-preemptive start.
TARGETS = {
    "share": {"paid_p50_vs_fifo": 0.65, "paid_p50_vs_alone": 1.25, "throughput_vs_fifo": 0.98},
    "strict": {"paid_p50_vs_fifo": 0.55, "paid_p50_vs_alone": 1.10, "throughput_vs_fifo": 0.98},
}
IDEALS = {
    "share": {"paid_p50_vs_fifo": 0.6, "paid_p50_vs_alone": 1.2},
    "strict": {"paid_p50_vs_fifo": 0.5, "paid_p50_vs_alone": 1.0},
}


def verdict(
    summary: dict[str, Any], samples: list[Sample], priority_mode: str = "share", iris: str = "iris"
) -> dict[str, Any]:
    """The acceptance figures of Iris arm `iris`: paid p50 vs FIFO and vs alone, throughput vs FIFO,
    starvation."""
    paid = {arm: summary[arm]["tiers"]["paid"]["p50_s"] for arm in ARMS if arm in summary}
    deadline_s = QUEUE_TIMEOUT_S + MAX_INFLIGHT_S
    starved = [
        s for s in samples
        if s.arm == iris and s.tier == "open-source"
        and not (s.outcome == "ok" or (s.outcome.startswith("deadline") and s.latency_s <= deadline_s + 5))
    ]  # fmt: skip
    return {
        "arm": iris,
        "paid_p50_vs_fifo": round(paid[iris] / paid["fifo"], 3),
        "paid_p50_vs_alone": round(paid[iris] / paid["paid-alone"], 3),
        "throughput_vs_fifo": round(summary[iris]["requests_per_s"] / summary["fifo"]["requests_per_s"], 3),
        "tokens_per_s_vs_fifo": round(summary[iris]["tokens_per_s"] / max(summary["fifo"]["tokens_per_s"], 1e-9), 3),
        "open_source_starved": len(starved),
        "open_source_answered": sum(s.arm == iris and s.tier == "open-source" and s.outcome == "ok" for s in samples),
        "targets": TARGETS[priority_mode],
        "closed_loop_ideal": IDEALS[priority_mode],
    }
