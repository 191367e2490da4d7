"""`iris bench scheduler --preemption both` end to end at a small size: the dispatch phases ran on a broker
without preemption and again on one with it, every request answered (the rates are counted over all the
replies), and the report carries both. Outcomes only: the rates themselves belong to the bench."""

from __future__ import annotations

from pathlib import Path

from iris.bench.scheduler import run_scheduler_bench


async def test_scheduler_bench_runs_dispatch_with_preemption_on_beside_off(tmp_path: Path) -> None:
    report = await run_scheduler_bench(200, 300, tmp_path / "scheduler.json", preemption="both")
    assert report["preemption"] == "both" and (tmp_path / "scheduler.json").exists()
    for block in (report, report["preemption_on"]):
        assert block["iris_dispatch_per_s"] > 0 and block["iris_end_to_end_per_s"] > 0
        assert len(block["iris_dispatch_rounds_per_s"]) == 3
    assert report["waiting_requests"] == 300
