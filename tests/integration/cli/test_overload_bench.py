"""`iris bench overload` end to end in its smallest configuration (FakeEngine), through the command line as a
user types it: capacity, the three phases on fresh stacks, every request ended with exactly one final on
the wire, the high arrivals the same in every phase, and the JSON's figures there. Outcomes only, never
timings: the figures themselves belong to the bench."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PHASES = ("unloaded", "off", "on")


def test_overload_bench_smallest_configuration(tmp_path: Path) -> None:
    out = tmp_path / "overload.json"
    command = ["bench", "overload", "--high-requests", "6", "--max-tokens", "16", "--fake-tps", "200"]
    command += ["--deadline", "5", "--out", str(out)]
    iris = [sys.executable, "-c", "from iris.cli import main; main()"]
    subprocess.run([*iris, *command], check=True, timeout=300)
    report = json.loads(out.read_text())
    assert report["capacity_requests_per_s"] > 0
    assert set(report["phases"]) == set(PHASES) and set(report["samples"]) == set(PHASES)
    for name in PHASES:
        samples, phase = report["samples"][name], report["phases"][name]
        assert phase["finals_per_request"] == {"1": len(samples)}  # exactly one final each, on the wire
        assert all(s["outcome"] in ("ok", "deadline_unmeetable", "deadline_exceeded", "cut_deadline") for s in samples)
        highs = [s for s in samples if s["tier"] == "high"]
        assert len(highs) == 6 and all(s["outcome"] == "ok" and s["completion_tokens"] == 16 for s in highs)
        assert phase["tiers"]["high"]["queue_wait"]["p99_ms"] >= phase["tiers"]["high"]["queue_wait"]["p50_ms"]
        assert phase["worker"]["max_suspended"] == 2
    planned = [[(s["index"], s["planned_s"]) for s in report["samples"][p] if s["tier"] == "high"] for p in PHASES]
    assert sorted(planned[0]) == sorted(planned[1]) == sorted(planned[2])
    assert "low" not in report["phases"]["unloaded"]["tiers"]
    for name in ("off", "on"):
        low = report["phases"][name]["tiers"]["low"]
        assert low["requests"] == low["completed"] + low["refused_unmeetable"] + low["expired"] + low["cut_at_deadline"]
        assert set(report["high_queue_wait_ratio"][name]) == {"p50_ms", "p99_ms"}
    assert set(report["verdict"]) >= {"high_p99_on_within_target", "low_never_starved", "one_final_per_request"}
    assert report["verdict"]["one_final_per_request"] is True
    assert report["setup"]["preempt_ratio"] == 2.0 and report["setup"]["max_concurrency"] == 2
