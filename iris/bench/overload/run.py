"""`iris bench overload`'s program: capacity, then the three phases, then the report (see the package)."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from pathlib import Path
from typing import Any

from iris.bench.harness import save_report
from iris.bench.overload.phase import measure_capacity, run_phase
from iris.bench.overload.plan import PHASES, OverloadOptions, plan
from iris.bench.overload.report import build_report, print_report
from iris.bench.seed.run import seed_prompts


async def run_overload_bench(options: OverloadOptions, out: Path) -> dict[str, Any]:
    prompts = seed_prompts()
    print("overload: measuring capacity (closed loop) ...", flush=True)
    capacity = await measure_capacity(options, prompts)
    rate_high = options.load * options.high_share * capacity
    rate_low = options.load * (1 - options.high_share) * capacity
    arrivals = plan(rate_high, rate_low, options.high_requests, options.seed)
    logs = out.parent / f"{out.stem}-logs"  # each phase's broker and worker log
    phases: dict[str, Any] = {}
    samples: dict[str, list[dict[str, Any]]] = {}
    for name in PHASES:
        mine = [a for a in arrivals if a.tier == "high"] if name == "unloaded" else arrivals
        print(f"overload: phase {name} ({len(mine)} requests over {arrivals[-1].at_s:.0f} s) ...", flush=True)
        phases[name], phase_samples = await run_phase(name, mine, options, prompts, logs)
        samples[name] = [asdict(s) for s in phase_samples]
    report = build_report(options, capacity, rate_high, rate_low, arrivals, phases)
    report["samples"] = samples
    report["logs"] = str(logs)
    print_report(report)
    return save_report(report, out)


def main(options: OverloadOptions, out: Path) -> None:
    asyncio.run(run_overload_bench(options, out))
