"""The broker can die at any moment: running requests finish without it, queued ones are served by the
next broker, which rebuilds from the stream and IRIS_LEASES; nothing is lost or run twice."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS

from iris.launch.nats_server import NatsServer
from iris.sdk.client import Client
from schemas.messages import Result
from tests.conftest import Processes
from tests.integration.services import eventually, stream_messages, wait_for_models, wait_stream_empty


async def test_kill_broker_running_finish_queued_served_after_restart(
    nats_server: NatsServer, nc: NATS, processes: Processes
) -> None:
    url = nats_server.url
    broker = processes.start("broker-1", "broker", "--nats", url)
    processes.start_fake_worker(url, "worker", tokens_per_s=20)
    client = Client(nc)
    await wait_for_models(client, "fake")

    generations = [client.generate(f"request {i}", model="fake", max_tokens=30) for i in range(4)]
    results: dict[int, Result] = {}
    first_chunk = asyncio.Event()

    async def consume(i: int) -> None:
        async for _ in generations[i]:
            first_chunk.set()
        assert generations[i].result is not None
        results[i] = generations[i].result

    tasks = [asyncio.ensure_future(consume(i)) for i in range(4)]
    await asyncio.wait_for(first_chunk.wait(), 30)
    broker.kill()  # SIGKILL while one request runs and three wait
    broker.wait()

    # The running request finishes with no broker at all.
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED, timeout=30)
    assert len(done) == 1 and len(results) == 1

    async def three_left() -> bool:  # the worker deletes the finished request just after its reply
        return await stream_messages(nc) == 3

    await eventually(three_left, 10, "the finished request to leave the stream")

    processes.start("broker-2", "broker", "--nats", url)
    await asyncio.wait_for(asyncio.gather(*tasks), 60)

    assert sorted(results) == [0, 1, 2, 3]
    assert all(r.attempt == 1 and r.usage.completion_tokens == 30 for r in results.values())
    # The worker deletes a request (then logs) just after its final reply: wait for that, then count runs.
    await wait_stream_empty(nc)
    await eventually(lambda: _logged_runs(processes, 4), what="four runs logged")
    assert processes.log("worker").count('"request done"') == 4  # each ran exactly once


async def _logged_runs(processes: Processes, count: int) -> bool:
    return processes.log("worker").count('"request done"') >= count
