"""The overload bench's figures: per phase and tier, the report's verdict, and what it prints."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict
from typing import Any

import msgspec

from iris.bench.harness import percentiles
from iris.bench.overload.plan import MAX_CONCURRENCY, PHASES, TARGET_RATIO, TIERS, Arrival, OverloadOptions, Sample


def _percentiles(samples_ms: list[float | None]) -> dict[str, float] | None:
    measured = [ms / 1000 for ms in samples_ms if ms is not None]
    return percentiles(measured) if measured else None


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
            "cut_at_deadline": outcomes.get("cut_deadline", 0),
            "outcomes": dict(outcomes),
            "queue_wait": _percentiles([s.queued_ms for s in ok]),
            "first_chunk": _percentiles([s.first_chunk_ms for s in ok]),  # high only: low is not streamed
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
        "finals_not_one": [
            {"request_id": s.request_id, "tier": s.tier, "outcome": s.outcome, "finals": finals[s.request_id]}
            for s in samples
            if finals[s.request_id] != 1
        ],
        "late_sends_max_ms": round(max(s.submitted_s - s.planned_s for s in samples) * 1000, 3),
    }


def _ratio(phases: dict[str, Any], phase: str, figure: str) -> float | None:
    unloaded = phases["unloaded"]["tiers"]["high"]["queue_wait"]
    loaded = phases[phase]["tiers"]["high"]["queue_wait"]
    if not unloaded or not loaded or unloaded[figure] <= 0:
        return None
    return round(float(loaded[figure]) / float(unloaded[figure]), 3)


def build_report(
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
            expired = row["expired"] + row["cut_at_deadline"]  # in the queue, or cut short running
            print(
                f"{name:9} {tier:5} {row['completed']:5} {row['refused_unmeetable']:7} {expired:7} "
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
