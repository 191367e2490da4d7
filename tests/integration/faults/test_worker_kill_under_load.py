"""`kill -9` of one of two worker processes under a load of 200 requests: every request gets exactly one
final result, the ones it was running are re-run on the other worker, and no request completes twice."""

from __future__ import annotations

import asyncio

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from iris.launch.nats_server import NatsServer
from iris.sdk.client import Client
from schemas.messages import Heartbeat
from schemas.subjects import heartbeat_subject
from tests.conftest import Processes
from tests.integration.services import SteadyLoad, eventually, wait_for_models, wait_stream_empty

REQUESTS = 200
IN_FLIGHT = 16


async def test_worker_killed_under_load(nats_server: NatsServer, nc: NATS, processes: Processes) -> None:
    url = nats_server.url
    # 3 heartbeats: a late one under load is no death
    processes.start("broker", "broker", "--nats", url, "--worker-timeout", "3")
    victim = processes.start_fake_worker(url, "w1", tokens_per_s=10)  # 1 s a request: it always holds a lease
    processes.start_fake_worker(url, "w2", tokens_per_s=200)
    client = Client(nc)
    await wait_for_models(client, "fake")
    load = SteadyLoad(client, REQUESTS, IN_FLIGHT, max_tokens=10, key_prefix="kill")

    async def under_way() -> bool:
        return len(load.outcomes) >= REQUESTS // 3 and '"request done"' in processes.log("w1")

    await eventually(under_way, what="both workers serving the load")
    running: asyncio.Queue[Heartbeat] = asyncio.Queue()

    async def on_beat(msg: Msg) -> None:
        beat = msgspec.json.decode(msg.data, type=Heartbeat)
        if beat.running:
            running.put_nowait(beat)

    beats = await nc.subscribe(heartbeat_subject("fake", "w1"), cb=on_beat)
    await asyncio.wait_for(running.get(), timeout=30)  # kill w1 while it reports leases it is running
    victim.kill()
    await beats.unsubscribe()
    outcomes = await load.finished()

    assert len(outcomes) == REQUESTS
    assert all(o.startswith("result:10:") for o in outcomes.values()), sorted(set(outcomes.values()))
    assert any(o.endswith("attempt2") for o in outcomes.values())  # what w1 was running was re-run
    await wait_stream_empty(nc)

    async def all_logged() -> bool:
        return processes.log("w1").count('"request done"') + processes.log("w2").count('"request done"') >= REQUESTS

    await eventually(all_logged, what="every run logged")
    done = processes.log("w1").count('"request done"') + processes.log("w2").count('"request done"')
    assert done == REQUESTS  # each request completed exactly once across both workers
