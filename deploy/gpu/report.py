"""Gather the GPU run's JSON files into report.md and report.json, with the acceptance ratios of issue 23.

Usage: python deploy/gpu/report.py REPORT_DIR   (reads worker.json, llama-server.json, seed/*.json,
steps.txt, gpu-memory.csv, preemption.json where present; a missing part is reported as missing).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def acceptance(worker: Any, server: Any) -> dict[str, Any]:
    """8 slots >= 3x one slot (aggregate, through Iris); 1 stream >= 95% of direct; >= 90% of the server."""
    found: dict[str, Any] = {}
    if worker:
        by_n = {row["sequences"]: row for row in worker["results"]}
        if 1 in by_n:
            found["single_stream_iris_vs_direct"] = (by_n[1]["iris_vs_direct"], 0.95)
        if 1 in by_n and 8 in by_n:
            found["iris_8_slots_vs_1_slot"] = (
                round(by_n[8]["iris_tokens_per_s"] / by_n[1]["iris_tokens_per_s"], 3),
                3.0,
            )
    if server:
        for row in server["results"]:
            found[f"iris_vs_llama_cpp_server_at_{row['sequences']}"] = (row["iris_vs_server"], 0.90)
    return {name: {"value": v, "target": t, "met": v >= t} for name, (v, t) in found.items()}


def gpu_memory_mib(path: Path) -> dict[str, int] | None:
    samples = [int(line) for line in path.read_text().split()] if path.is_file() else []
    return {"peak": max(samples), "idle": min(samples), "samples": len(samples)} if samples else None


def _table(title: str, keys: tuple[str, ...], rows: list[dict[str, Any]]) -> list[str]:
    lines = ["", f"## {title}", "", "| " + " | ".join(keys) + " |", "|---" * len(keys) + "|"]
    return lines + ["| " + " | ".join(str(row[k]) for k in keys) + " |" for row in rows]


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Iris GPU proof (issue 23)", "", "| step | how it went | seconds |", "|---|---|---|"]
    lines += [f"| {s} | {status} | {secs} |" for s, status, secs in report["steps"]]
    lines += ["", "## Acceptance", "", "| ratio | value | target | met |", "|---|---|---|---|"]
    lines += [f"| {n} | {a['value']} | {a['target']} | {'yes' if a['met'] else 'NO'} |"
              for n, a in report["acceptance"].items()]  # fmt: skip
    if server := report["llama_server"]:
        keys = ("sequences", "iris_tokens_per_s", "server_tokens_per_s", "iris_vs_server")
        lines += _table("Iris vs llama_cpp.server", keys, server["results"])
        ttft = server["time_to_first_token"]
        lines += [
            "",
            f"Time to first token p50: Iris {ttft['iris']['p50_ms']} ms, server {ttft['server']['p50_ms']} ms.",
        ]
    if worker := report["worker"]:
        keys = ("sequences", "direct_tokens_per_s", "iris_tokens_per_s", "iris_vs_direct")
        lines += _table("Iris vs direct in-process", keys, worker["results"])
    lines += ["", f"GPU memory (MiB, nvidia-smi): {report['gpu_memory_mib']}"]
    lines += ["", f"Seed experiment reports: {', '.join(report['seed']) or 'none'} (in seed/)"]
    lines += ["", f"Preemption: {'preemption.json' if report['preemption'] else 'not measured'}", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    folder = Path(argv[0])
    steps_file = folder / "steps.txt"
    steps = [line.split("|") for line in steps_file.read_text().splitlines()] if steps_file.is_file() else []
    worker, server = load(folder / "worker.json"), load(folder / "llama-server.json")
    report = {
        "steps": steps,
        "acceptance": acceptance(worker, server),
        "worker": worker,
        "llama_server": server,
        "gpu_memory_mib": gpu_memory_mib(folder / "gpu-memory.csv"),
        "seed": sorted(p.name for p in (folder / "seed").glob("*")) if (folder / "seed").is_dir() else [],
        "preemption": load(folder / "preemption.json"),
    }
    (folder / "report.json").write_text(json.dumps(report, indent=2))
    (folder / "report.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
