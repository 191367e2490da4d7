"""A 3-node JetStream cluster under load loses a node (`kill -9`): every request still gets exactly one
final reply, none runs twice, and the node rejoins when restarted, with no manual step. Half the load comes
through the node that dies: its clients reconnect to another node and read the finals sent meanwhile from
`IRIS_ANSWERS` (core NATS does not buffer them), so none waits for its deadline."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from gpu_worker.engines.fake import FakeEngine
from iris.launch.nats_server import NatsCluster, NatsServer
from iris.sdk.client import Client
from schemas.subjects import REQUEST_STREAM
from tests.integration.services import SteadyLoad, broker, eventually, wait_stream_empty, worker

pytestmark = pytest.mark.slow  # the real model (or a cluster) in real processes

REQUESTS = 200
IN_FLIGHT = 24
DEADLINE_S = 45.0  # a final missed for good shows as deadline_exceeded, well before the default 120 s


async def _stream_leader(client: Client) -> str:
    info = await client.nc.jetstream(timeout=2.0).stream_info(REQUEST_STREAM)
    assert info.cluster is not None and info.cluster.leader
    return info.cluster.leader


async def test_stream_leader_killed_under_load(tmp_path: Path) -> None:
    await _kill_under_load(tmp_path, kill_leader=True)


async def test_client_node_killed_under_load(tmp_path: Path) -> None:
    """A node that leads nothing: JetStream never pauses, so finals keep coming while its clients are away."""
    await _kill_under_load(tmp_path, kill_leader=False)


async def _kill_under_load(tmp_path: Path, *, kill_leader: bool) -> None:
    cluster = NatsCluster(tmp_path / "cluster", 3, log_dir=tmp_path).start()
    engines = [FakeEngine("fake", slots=4, tokens_per_s=200) for _ in range(2)]
    try:
        async with (
            broker(cluster.url, replicas=3),
            worker(cluster.url, engines[0], "w1"),
            worker(cluster.url, engines[1], "w2"),
            await Client.connect(cluster.url) as probe,
        ):
            leader = await _stream_leader(probe)
            victim = next(n for n in cluster.nodes if n.cluster and (n.cluster.name == leader) == kill_leader)
            survivor = next(node for node in cluster.nodes if node is not victim)
            client = await Client.connect(survivor.url)
            outcomes = await _load_half_through(client, victim, survivor)

            assert len(outcomes) == REQUESTS  # every request got its one final reply
            kinds = Counter(outcome.split(":")[0] for outcome in outcomes.values())
            print(
                f"\noutcomes after killing {victim.cluster.name if victim.cluster else victim} (stream leader "
                f"{leader}): {dict(kinds)}; errors: {Counter(o for o in outcomes.values() if o.startswith('error'))}"
            )
            assert all(o.startswith(("result:8:", "error:")) for o in outcomes.values())
            assert kinds["result"] == REQUESTS  # 0 deadline_exceeded: none waited for a final it had missed
            assert sum(e.generations for e in engines) <= REQUESTS  # no request ran twice

            victim.start()  # the node comes back and catches up on its own

            async def rejoined() -> bool:
                info = await client.nc.jetstream(timeout=2.0).stream_info(REQUEST_STREAM)
                replicas = info.cluster.replicas if info.cluster else None
                return bool(replicas) and all(r.current for r in replicas or []) and len(replicas or []) == 2

            await eventually(rejoined, 60, "the restarted node to rejoin as a current replica")
            await wait_stream_empty(client.nc)
            await client.close()
    finally:
        cluster.stop()


async def _load_half_through(client: Client, victim: NatsServer, survivor: NatsServer) -> dict[str, str]:
    """Half the load on a client of the node that is killed a third of the way in, half on a survivor's."""
    doomed = await Client.connect(f"{victim.url},{survivor.url}", dont_randomize=True)
    loads = [
        SteadyLoad(client, REQUESTS // 2, IN_FLIGHT // 2, max_tokens=8, key_prefix="survivor", deadline_s=DEADLINE_S),
        SteadyLoad(doomed, REQUESTS // 2, IN_FLIGHT // 2, max_tokens=8, key_prefix="doomed", deadline_s=DEADLINE_S),
    ]
    await asyncio.gather(*(load.under_way(1 / 3) for load in loads))
    victim.kill()
    outcomes = {f"{load.key_prefix}-{i}": outcome for load in loads for i, outcome in (await load.finished()).items()}
    assert doomed.nc.stats["reconnects"] >= 1  # its node did die under it
    await doomed.close()
    return outcomes
