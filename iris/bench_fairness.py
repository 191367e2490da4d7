"""`iris bench fairness`: token shares under saturation through real NATS, broker and workers.

Three workloads weighted 1:2:4, two users each; in the heaviest workload one user is greedy and keeps
10x the others' requests outstanding. Every user runs closed loops (a new request the moment one
finishes), so every flow is always backlogged. Shares are counted over the completions inside the run
window and compared with the target: workload weight / total weight, split equally between its users.
Prints the table and Jain's fairness index per workload; saves JSON.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from iris.bench_overhead import spawn, stop_all, wait_for_model
from iris.client import Client
from iris.nats_server import NatsServer

WEIGHTS = {"bronze": 1.0, "silver": 2.0, "gold": 4.0}
USERS = {"bronze": ["b1", "b2"], "silver": ["s1", "s2"], "gold": ["greedy", "g2"]}
GREEDY_FACTOR = 10
TARGET_SHARE_TOLERANCE = 0.05
TARGET_JAIN = 0.99


def jain(values: list[float]) -> float:
    total, squares = sum(values), sum(v * v for v in values)
    return total * total / (len(values) * squares) if squares else 0.0


async def user_loop(client: Client, workload: str, user: str, tokens: int, end: float, served: Counter[str]) -> None:
    while time.monotonic() < end:
        result = await client.complete(f"{user} asks", model="fake", workload=workload, user=user, max_tokens=tokens)
        if time.monotonic() <= end:
            served[f"{workload}/{user}"] += result.usage.completion_tokens


def shares_table(served: Counter[str]) -> list[dict[str, Any]]:
    total = sum(served.values())
    total_weight = sum(WEIGHTS.values())
    rows = []
    for workload, users in USERS.items():
        for user in users:
            target = WEIGHTS[workload] / total_weight / len(users)
            share = served[f"{workload}/{user}"] / total if total else 0.0
            rows.append(
                {
                    "workload": workload,
                    "user": user,
                    "tokens": served[f"{workload}/{user}"],
                    "share": round(share, 4),
                    "target": round(target, 4),
                    "error_pct": round((share - target) / target * 100, 2),
                }
            )
    return rows


async def run_fairness_bench(
    duration_s: float, outstanding: int, slots: int, out: Path, policy: str = "wfq"
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="iris-fairness-") as tmp:
        workdir = Path(tmp)
        config = workdir / "iris.toml"
        weights = ", ".join(f"{k} = {v}" for k, v in WEIGHTS.items())
        config.write_text(f'[broker]\npolicy = "{policy}"\nworkload_weights = {{ {weights} }}\n')
        server = NatsServer(workdir / "nats").start()
        procs: list[subprocess.Popen[bytes]] = [
            spawn("broker", server.url, ["--config", str(config)], workdir / "broker.log"),
            spawn(
                "gpu_worker",
                server.url,
                ["--engine", "fake", "--model-name", "fake", "--slots", str(slots), "--fake-tps", "1000"],
                workdir / "worker.log",
            ),
        ]
        try:
            async with await Client.connect(server.url) as client:
                await wait_for_model(client, "fake", procs)
                served: Counter[str] = Counter()
                end = time.monotonic() + duration_s
                loops = [
                    user_loop(client, workload, user, 20, end, served)
                    for workload, users in USERS.items()
                    for user in users
                    for _ in range(outstanding * (GREEDY_FACTOR if user == "greedy" else 1))
                ]
                await asyncio.gather(*loops)
        finally:
            stop_all(procs, server)
    rows = shares_table(served)
    jain_by_workload = {
        w: round(jain([r["share"] / r["target"] for r in rows if r["workload"] == w]), 4) for w in USERS
    }
    report = {
        "bench": "fairness",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": duration_s,
        "outstanding_per_user": outstanding,
        "greedy_factor": GREEDY_FACTOR,
        "slots": slots,
        "weights": WEIGHTS,
        "flows": rows,
        "jain_within_workload": jain_by_workload,
        "targets": {"share_tolerance": TARGET_SHARE_TOLERANCE, "jain": TARGET_JAIN},
    }
    print(f"{'workload':10} {'user':8} {'tokens':>8} {'share':>8} {'target':>8} {'error':>8}")
    for r in rows:
        cells = f"{r['tokens']:>8} {r['share']:>8.4f} {r['target']:>8.4f} {r['error_pct']:>7.2f}%"
        print(f"{r['workload']:10} {r['user']:8} {cells}")
    print("Jain's index within each workload: " + ", ".join(f"{w} {j}" for w, j in jain_by_workload.items()))
    print(f"targets: every share within ±{TARGET_SHARE_TOLERANCE:.0%} of target, Jain >= {TARGET_JAIN}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"saved {out}")
    return report
