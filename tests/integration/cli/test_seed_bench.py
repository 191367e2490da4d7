"""`iris bench seed` end to end in smoke mode (FakeEngine): three arms on real stacks, one outcome per
request, the report, JSON, both plots and the HTML page written; the first through the command line as a
user types it (its defaults included)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from iris.bench.seed.run import USERS_PER_TIER, SeedOptions, run_seed_bench, seed_prompts


def test_seed_bench_smoke(tmp_path: Path) -> None:
    command = ["bench", "seed", "--engine", "fake", "--fake-tps", "200", "--prompts", "2", "--max-tokens", "10"]
    iris = [sys.executable, "-c", "from iris.cli import main; main()"]
    subprocess.run([*iris, *command, "--out-dir", str(tmp_path)], check=True, timeout=600)
    report = json.loads((tmp_path / "seed.json").read_text())
    for behaviour in ("closed", "burst"):
        block = report["results"][behaviour]
        samples = block["samples"]
        for arm in ("fifo", "iris", "paid-alone"):
            users = USERS_PER_TIER * (1 if arm == "paid-alone" else 2)
            mine = [(s["user"], s["index"]) for s in samples if s["arm"] == arm]
            assert sorted(mine) == sorted(set(mine)) and len(mine) == users * 2  # one outcome per request
        assert all(s["outcome"] == "ok" and s["completion_tokens"] == 10 for s in samples)
        assert block["verdict"]["open_source_starved"] == 0
        for plot in ("latency-over-time", "latency-cdf"):
            assert (tmp_path / f"{behaviour}-{plot}.png").stat().st_size > 10_000
    text = (tmp_path / "report.md").read_text()
    assert "paid p50, Iris (WFQ) / FIFO" in text and "| Iris (WFQ) | paid |" in text
    assert report["setup"]["labels"] == "reference" and "a workload per tier" in text
    assert report["setup"]["max_concurrency"] == 2
    assert report["setup"]["answers"] == "fixed" and "(every answer that long)" in text  # the same work in each arm
    page = (tmp_path / "report.html").read_text()  # before/after side by side, drawn by the status page's charts
    assert "IrisCharts.draw" in page and 'id="row-closed"' in page and 'id="row-burst"' in page
    assert '"fifo"' in page and '"iris"' in page and "paid-1" not in page and "http" not in page.split("<script")[0]
    assert len(seed_prompts()) >= 250 and len(set(seed_prompts())) == len(seed_prompts())


async def test_seed_bench_admission_mode_labels_as_the_reference(tmp_path: Path) -> None:
    """Admission mode: tickets with the reference's labels (a workload per tier), the app's own model calls;
    never more than max concurrency calls at once (run_arm raises otherwise), one outcome per call."""
    options = SeedOptions(mode="admission", model_call_s=0.05)
    report = await run_seed_bench(["closed"], 2, 10, [], "unused", tmp_path, options=options)
    setup = report["setup"]
    assert setup["labels"] == "reference" and setup["workloads"] == {"paid": "paid", "open-source": "open-source"}
    assert setup["mode"] == "admission" and setup["model"] == "seed-app"
    samples = report["results"]["closed"]["samples"]
    assert len(samples) == 2 * 10 * 2 + 2 * 5 and all(s["outcome"] == "ok" for s in samples)
    text = (tmp_path / "report.md").read_text()
    assert "a workload per tier (`paid` priority 5, `open-source` priority 1)" in text and "admission mode" in text


async def test_seed_bench_preemption_both_runs_the_arm_with_preemption_beside(tmp_path: Path) -> None:
    """--preemption both: the Iris arm with and without preemption on the same prompts, each with its
    verdict in the report, and every answer of every arm complete."""
    worker = ["--engine", "fake", "--model-name", "fake", "--fake-tps", "100"]
    options = SeedOptions(preemption="both", preempt_ratio=2.0)
    report = await run_seed_bench(["burst"], 2, 40, worker, "fake", tmp_path, options=options)
    block = report["results"]["burst"]
    assert set(block["verdicts"]) == {"iris", "iris-preempt"}
    arms = {s["arm"] for s in block["samples"]}
    assert arms == {"fifo", "iris", "iris-preempt", "paid-alone"}
    assert all(s["outcome"] == "ok" and s["completion_tokens"] == 40 for s in block["samples"])
    assert block["verdicts"]["iris-preempt"]["open_source_starved"] == 0
    text = (tmp_path / "report.md").read_text()
    assert "paid p50, Iris (WFQ + preemption) / FIFO" in text and report["setup"]["preemption"] == "both"
