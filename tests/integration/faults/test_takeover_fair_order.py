"""A standby elected with a deep backlog serves it in fair order from its first lease. Two brokers
(weights 1:2:3:4 over four workloads), workers that drain while 5,000 requests wait, published one workload
after the other: an index filling in stream order would hand the first leases to the first workload. The
leader is killed (SIGKILL), the workers start to serve: the first 1,000 leases the new leader hands out
follow the weights within 5%, whether it read the backlog ahead while standing by or replays the stream once
elected (`read_ahead = false`, or a read-ahead that could not start or be checked: the first round waits
for the replay)."""

from __future__ import annotations

from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from iris.bench.scale_fleet import SimFleet, publish_backlog
from iris.bench.scheduler import wait_indexed
from iris.launch.nats_server import NatsServer
from tests.conftest import Processes
from tests.integration.services import eventually

MODEL = "deep"
WEIGHTS = {"w1": 1.0, "w2": 2.0, "w3": 3.0, "w4": 4.0}
# What the simulated workers report each answer took: with it stated, every turn is charged what it costs,
# and the shares of the first leases are the weights' (an estimate far above it is refunded at most to
# the level's floor, which evens shares out while estimates are learnt).
COST_TOKENS = 2
WAITING = 5_000
FIRST = 1_000


@pytest.mark.parametrize("read_ahead", [True, False], ids=["warm", "replay"])
async def test_new_leader_serves_a_deep_backlog_in_fair_order_from_the_start(
    nats_server: NatsServer, nc: NATS, processes: Processes, tmp_path: Path, read_ahead: bool
) -> None:
    url = nats_server.url
    config = tmp_path / "iris.toml"
    config.write_text("[broker]\nworkload_weights = { " + ", ".join(f"{k} = {w}" for k, w in WEIGHTS.items()) + " }\n")
    processes.start("broker-a", "broker", "--nats", url, "--config", str(config), "--broker-id", "a")

    async def logged(name: str, text: str) -> bool:
        return text in processes.log(name)

    await eventually(lambda: logged("broker-a", '"leading"'), timeout_s=120, what="broker a leading")
    warm = "--read-ahead" if read_ahead else "--no-read-ahead"
    processes.start("broker-b", "broker", "--nats", url, "--config", str(config), "--broker-id", "b", warm)
    await eventually(lambda: logged("broker-b", '"broker started"'), timeout_s=120, what="broker b standing by")
    fleet = await SimFleet(url, MODEL, 4, 16, record_first=FIRST).start()  # draining: nothing runs yet
    try:
        for workload in WEIGHTS:
            await publish_backlog(nc, MODEL, WAITING // len(WEIGHTS), workload, COST_TOKENS)
        await wait_indexed(nc, MODEL, WAITING, 300)
        processes.procs["broker-a"].kill()
        fleet.serve()
        await eventually(lambda: logged("broker-b", '"leading"'), timeout_s=60, what="broker b taking the lead")

        async def recorded() -> bool:
            return len(fleet.first_workloads) >= FIRST

        await eventually(recorded, timeout_s=120, what=f"the first {FIRST} leases of broker b")
    finally:
        await fleet.stop()
    total = sum(WEIGHTS.values())
    shares = {w: fleet.first_workloads.count(w) / FIRST for w in WEIGHTS}
    for workload, weight in WEIGHTS.items():
        assert abs(shares[workload] / (weight / total) - 1) <= 0.05, shares
