"""`iris bench failover`: how long requests wait when the leading broker dies.

Two broker processes (one leads through the `IRIS_BROKERS` key, one stands by), two FakeEngine workers
and closed-loop clients on a real nats-server. Each round `kill -9`s the current leader, measures

  * election: from the kill to the standby's "elected leader" log line;
  * service resumed: from the kill to the first request *started* after the election (a result's arrival
    minus its run time), which includes the new leader's rebuild and its wait for worker heartbeats;

then starts the killed broker again as the new standby. Every request must get one result.
"""

from __future__ import annotations

import asyncio
import json
import platform
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from iris.bench.harness import save_report
from iris.launch.nats_server import NatsServer
from iris.launch.processes import Process, spawn, wait_for_model
from iris.sdk.client import Client
from schemas.errors import IrisError

TARGET_TAKEOVER_S = 5.0
CLIENTS = 16


def elected_at(log: Path, after: float) -> float | None:
    """Unix time of the first "elected leader" line logged after `after`."""
    for line in log.read_text().splitlines():
        if '"elected leader"' in line:
            when = datetime.fromisoformat(json.loads(line)["timestamp"].replace("Z", "+00:00")).timestamp()
            if when > after:
                return when
    return None


class Load:
    """Closed-loop clients; remembers when each request started (arrival − run time) and failures."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.starts: list[float] = []
        self.errors: list[str] = []
        self.sent = 0
        self._running = True

    async def user(self, u: int) -> None:
        while self._running:
            self.sent += 1
            try:
                result = await self.client.complete(f"user {u} request {self.sent}", model="fake", max_tokens=4)
                self.starts.append(time.time() - result.timings.run_ms / 1000)
            except IrisError as exc:
                self.errors.append(exc.code.value)

    def stop(self) -> None:
        self._running = False

    def first_start_after(self, moment: float) -> float | None:
        later = [t for t in self.starts if t > moment]
        return min(later) if later else None


async def one_round(load: Load, victim: Process, standby_log: Path) -> dict[str, float]:
    killed_at = time.time()
    victim.kill()
    victim.wait()
    while (elected := elected_at(standby_log, killed_at)) is None:
        if time.time() - killed_at > 60:
            raise RuntimeError("no standby took the lead within 60 s of the leader's death")
        await asyncio.sleep(0.05)
    while (resumed := load.first_start_after(elected)) is None:  # noqa: ASYNC110 (results land in a list)
        await asyncio.sleep(0.05)
    await asyncio.sleep(2.0)  # let the new leader serve a while before the next kill
    return {
        "election_s": round(elected - killed_at, 3),
        "service_resumed_s": round(resumed - killed_at, 3),
    }


async def run_failover_bench(rounds: int, out: Path) -> dict[str, Any]:
    report: dict[str, Any] = {"bench": "failover", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    report["machine"] = {"platform": platform.platform()}
    with tempfile.TemporaryDirectory(prefix="iris-failover-") as tmp:
        workdir = Path(tmp)
        server = NatsServer(workdir / "nats").start()
        brokers: dict[str, Process] = {}

        def start_broker(name: str) -> None:
            brokers[name] = spawn("broker", server.url, ["--broker-id", name], workdir / f"broker-{name}.log")

        start_broker("a")
        workers = [
            spawn(
                "gpu_worker",
                server.url,
                ["--engine", "fake", "--model-name", "fake", "--fake-tps", "1000", "--worker-id", f"w{i}"],
                workdir / f"w{i}.log",
            )
            for i in range(2)
        ]
        try:
            async with await Client.connect(server.url) as client:
                await wait_for_model(client, "fake", [brokers["a"], *workers])
                start_broker("b")
                load = Load(client)
                users = [asyncio.ensure_future(load.user(u)) for u in range(CLIENTS)]
                await asyncio.sleep(2.0)
                report["rounds"] = await kill_rounds(load, brokers, start_broker, rounds, workdir)
                load.stop()
                await asyncio.gather(*users)
                report["requests"] = load.sent
                report["errors"] = len(load.errors)
        finally:
            for proc in [*brokers.values(), *workers]:
                proc.kill()
                proc.wait()
            server.stop()
    return _save(report, out)


async def kill_rounds(
    load: Load,
    brokers: dict[str, Process],
    start_broker: Callable[[str], None],
    rounds: int,
    workdir: Path,
) -> list[dict[str, float]]:
    """`kill -9` of the leader, `rounds` times; the killed broker comes back as the next standby."""
    leader, standby = "a", "b"
    figures_per_round = []
    for _ in range(rounds):
        figures = await one_round(load, brokers[leader], workdir / f"broker-{standby}.log")
        figures_per_round.append(figures)
        print(
            f"leader {leader} killed: elected {figures['election_s']} s, "
            f"service resumed {figures['service_resumed_s']} s (target <= {TARGET_TAKEOVER_S})"
        )
        start_broker(leader)
        leader, standby = standby, leader
    return figures_per_round


def _save(report: dict[str, Any], out: Path) -> dict[str, Any]:
    worst = max(r["service_resumed_s"] for r in report["rounds"])
    report["worst_service_resumed_s"] = worst
    report["target_s"] = TARGET_TAKEOVER_S
    print(
        f"{report['requests']} requests, {report['errors']} errors; worst takeover {worst} s "
        f"(target <= {TARGET_TAKEOVER_S} s)"
    )
    return save_report(report, out)
