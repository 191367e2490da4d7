"""`iris bench fairness`: token shares under saturation through real NATS, broker and workers.

Two scenarios, each on a fresh stack:
  * `weights`    — workloads weighted 1:2:4 at equal priority, two users each; in the heaviest one a greedy
                   user keeps 10x the others' requests outstanding;
  * `priorities` — workloads a/b/c at `Iris-Priority` 1/2/4 and no configured weights (priority weighs
                   across workloads); in c a greedy user keeps 5x the outstanding requests of c's other user.
Every user runs closed loops (a new request the moment one finishes), so every flow is always backlogged.
Shares are counted over the completions inside the run window and compared with the formula: weight x
priority / the sum over workloads, split equally between a workload's users. Prints a table per scenario
and Jain's fairness index per workload; saves JSON.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iris.bench.harness import save_report
from iris.launch.nats_server import NatsServer
from iris.launch.processes import Process, spawn, stop_all, wait_for_model
from iris.sdk.client import Client

TARGET_SHARE_TOLERANCE = 0.05
TARGET_JAIN = 0.99


@dataclass(frozen=True)
class Workload:
    weight: float  # configured `workload_weights` (1 = not configured)
    priority: int
    users: tuple[str, ...]


@dataclass(frozen=True)
class Scenario:
    name: str
    workloads: dict[str, Workload]
    greedy_factor: int  # the user named "greedy" keeps this many times the others' requests outstanding

    def target(self, workload: str) -> float:
        total = sum(w.weight * w.priority for w in self.workloads.values())
        mine = self.workloads[workload]
        return mine.weight * mine.priority / total / len(mine.users)

    def config(self, policy: str) -> str:
        weights = ", ".join(f"{k} = {w.weight}" for k, w in self.workloads.items() if w.weight != 1)
        return f'[broker]\npolicy = "{policy}"\nworkload_weights = {{ {weights} }}\n'


SCENARIOS = {
    "weights": Scenario(
        "weights",
        {
            "bronze": Workload(1.0, 1, ("b1", "b2")),
            "silver": Workload(2.0, 1, ("s1", "s2")),
            "gold": Workload(4.0, 1, ("greedy", "g2")),
        },
        10,
    ),
    "priorities": Scenario(
        "priorities",
        {"a": Workload(1.0, 1, ("a1",)), "b": Workload(1.0, 2, ("b1",)), "c": Workload(1.0, 4, ("greedy", "c2"))},
        5,
    ),
}


def jain(values: list[float]) -> float:
    total, squares = sum(values), sum(v * v for v in values)
    return total * total / (len(values) * squares) if squares else 0.0


async def user_loop(client: Client, workload: str, priority: int, user: str, end: float, served: Counter[str]) -> None:
    while time.monotonic() < end:
        result = await client.complete(
            f"{user} asks", model="fake", workload=workload, priority=priority, user=user, max_tokens=20
        )
        if time.monotonic() <= end:
            served[f"{workload}/{user}"] += result.usage.completion_tokens


def shares_table(scenario: Scenario, served: Counter[str]) -> list[dict[str, Any]]:
    total = sum(served.values())
    rows = []
    for workload, spec in scenario.workloads.items():
        for user in spec.users:
            target = scenario.target(workload)
            share = served[f"{workload}/{user}"] / total if total else 0.0
            rows.append(
                {
                    "workload": workload,
                    "priority": spec.priority,
                    "user": user,
                    "tokens": served[f"{workload}/{user}"],
                    "share": round(share, 4),
                    "target": round(target, 4),
                    "error_pct": round((share - target) / target * 100, 2),
                }
            )
    return rows


async def run_scenario(
    scenario: Scenario, duration_s: float, outstanding: int, slots: int, policy: str
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"iris-fairness-{scenario.name}-") as tmp:
        workdir = Path(tmp)
        config = workdir / "iris.toml"
        config.write_text(scenario.config(policy))
        server = NatsServer(workdir / "nats").start()
        worker = ["--engine", "fake", "--model-name", "fake", "--slots", str(slots), "--fake-tps", "1000"]
        procs: list[Process] = [
            spawn("broker", server.url, ["--config", str(config)], workdir / "broker.log"),
            spawn("gpu_worker", server.url, worker, workdir / "worker.log"),
        ]
        try:
            async with await Client.connect(server.url) as client:
                await wait_for_model(client, "fake", procs)
                served: Counter[str] = Counter()
                end = time.monotonic() + duration_s
                loops = [
                    user_loop(client, workload, spec.priority, user, end, served)
                    for workload, spec in scenario.workloads.items()
                    for user in spec.users
                    for _ in range(outstanding * (scenario.greedy_factor if user == "greedy" else 1))
                ]
                await asyncio.gather(*loops)
        finally:
            stop_all(procs, server)
    rows = shares_table(scenario, served)
    jain_by_workload = {
        w: round(jain([r["share"] / r["target"] for r in rows if r["workload"] == w]), 4) for w in scenario.workloads
    }
    print(f"scenario {scenario.name}: greedy user keeps {scenario.greedy_factor}x outstanding")
    print(f"{'workload':10} {'weight':>6} {'prio':>4} {'user':8} {'tokens':>8} {'share':>8} {'target':>8} {'error':>8}")
    for r in rows:
        spec = scenario.workloads[r["workload"]]
        cells = f"{r['tokens']:>8} {r['share']:>8.4f} {r['target']:>8.4f} {r['error_pct']:>7.2f}%"
        print(f"{r['workload']:10} {spec.weight:>6} {spec.priority:>4} {r['user']:8} {cells}")
    print("Jain's index within each workload: " + ", ".join(f"{w} {j}" for w, j in jain_by_workload.items()))
    return {
        "greedy_factor": scenario.greedy_factor,
        "workloads": {
            k: {"weight": w.weight, "priority": w.priority, "users": list(w.users)}
            for k, w in scenario.workloads.items()
        },
        "flows": rows,
        "jain_within_workload": jain_by_workload,
        "within_tolerance": all(abs(r["error_pct"]) <= TARGET_SHARE_TOLERANCE * 100 for r in rows),
    }


async def run_fairness_bench(
    duration_s: float,
    outstanding: int,
    slots: int,
    out: Path,
    policy: str = "wfq",
    scenarios: tuple[str, ...] = tuple(SCENARIOS),
) -> dict[str, Any]:
    results = {name: await run_scenario(SCENARIOS[name], duration_s, outstanding, slots, policy) for name in scenarios}
    report = {
        "bench": "fairness",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "policy": policy,
        "duration_s": duration_s,
        "outstanding_per_user": outstanding,
        "slots": slots,
        "scenarios": results,
        "targets": {"share_tolerance": TARGET_SHARE_TOLERANCE, "jain": TARGET_JAIN},
    }
    print(f"targets: every share within ±{TARGET_SHARE_TOLERANCE:.0%} of target, Jain >= {TARGET_JAIN}")
    return save_report(report, out)
