"""Dead letters on a real nats-server with real worker processes: a poison prompt that crashes every worker
it reaches is given up on after `max_attempts` workers and lands in `IRIS_DLQ` with its reason, its client
gets one typed error, the rest of the load is served and the fleet survives; `iris dlq ls` shows it and
`iris dlq replay` runs it again once a healthy worker is there."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from gpu_worker.engines.fake import CRASH_EXIT_CODE
from iris.launch.nats_server import NatsServer
from iris.ops.dead_letters import dead_letter_count, list_dead_letters
from iris.sdk.client import Client
from schemas import headers as h
from schemas.errors import IrisError
from schemas.messages import error_decoder, result_decoder
from schemas.subjects import DLQ_STREAM
from tests.conftest import Processes
from tests.integration.commands import IRIS
from tests.integration.services import eventually, wait_for_models, wait_stream_empty

POISON = "POISON"


def start_fake_worker(processes: Processes, url: str, worker_id: str, crash_on: str = "") -> subprocess.Popen[bytes]:
    args = ["--nats", url, "--engine", "fake", "--model-name", "fake", "--fake-tps", "200", "--worker-id", worker_id]
    return processes.start(worker_id, "gpu_worker", *args, *(["--fake-crash-on", crash_on] if crash_on else []))


async def publish_poison(nc: NATS, request_id: str) -> Subscription:
    """A poison request over raw NATS; returns the subscription on its reply inbox."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    headers = {h.REPLY_TO: inbox, h.MSG_ID: request_id, h.DEADLINE: str(int(time.time() * 1000) + 60_000)}
    body = json.dumps({"prompt": f"please {POISON} the worker", "max_tokens": 5}).encode()
    await nc.jetstream().publish("iris.req.fake.default", body, headers=headers)
    return sub


async def final_replies(sub: Subscription) -> list[tuple[str, bytes]]:
    """Every final reply (result or error) received so far on `sub`."""
    finals = []
    while sub.pending_msgs:
        msg = await sub.next_msg(timeout=1)
        kind = (msg.headers or {}).get(h.KIND, "")
        if kind in (h.KIND_RESULT, h.KIND_ERROR):
            finals.append((kind, msg.data))
    return finals


async def test_poison_prompt_is_dead_lettered_after_max_attempts(
    nats_server: NatsServer, nc: NATS, processes: Processes
) -> None:
    url = nats_server.url
    processes.start("broker", "broker", "--nats", url, "--worker-timeout", "1", "--max-attempts", "3")
    workers = {f"w{i}": start_fake_worker(processes, url, f"w{i}", crash_on=POISON) for i in range(1, 5)}
    client = Client(nc)
    await wait_for_models(client, "fake")

    async def four_workers() -> bool:
        return all('"worker started"' in processes.log(w) for w in workers)

    await eventually(four_workers, what="four workers started")
    sub = await publish_poison(nc, "poison-1")
    outcomes: list[str] = []
    slots = asyncio.Semaphore(4)

    async def one(i: int) -> None:
        async with slots:
            try:
                result = await client.complete(f"good {i}", model="fake", max_tokens=5, idempotency_key=f"good-{i}")
                outcomes.append(f"result:{result.usage.completion_tokens}")
            except IrisError as exc:
                outcomes.append(f"error:{exc.code.value}")

    await asyncio.gather(*(one(i) for i in range(40)))

    async def dead_lettered() -> bool:
        return await dead_letter_count(nc) == 1

    await eventually(dead_lettered, what="the poison request in IRIS_DLQ")
    await wait_stream_empty(nc)
    await nc.flush()
    finals = await final_replies(sub)
    assert [kind for kind, _ in finals] == [h.KIND_ERROR]  # one typed error, no result
    error = error_decoder.decode(finals[0][1])
    assert error.code == "worker_failed" and "3 workers" in error.message and DLQ_STREAM in error.message
    assert outcomes == ["result:5"] * 40  # everything else was served
    (dead,) = await list_dead_letters(nc)
    assert (dead.request_id, dead.code, dead.attempts, dead.model) == ("poison-1", "worker_failed", 3, "fake")
    crashed = [w for w, proc in workers.items() if proc.poll() is not None]
    assert len(crashed) == 3 and all(workers[w].returncode == CRASH_EXIT_CODE for w in crashed)
    survivor = await client.complete("after the poison", model="fake", max_tokens=3)  # the fleet survived
    assert survivor.usage.completion_tokens == 3 and survivor.worker not in crashed


def iris_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*IRIS, *args], capture_output=True, text=True, timeout=60)


async def test_dlq_ls_and_replay_run_it_again_on_a_healthy_worker(
    nats_server: NatsServer, nc: NATS, processes: Processes
) -> None:
    url = nats_server.url
    processes.start("broker", "broker", "--nats", url, "--worker-timeout", "1", "--max-attempts", "1")
    buggy = start_fake_worker(processes, url, "buggy", crash_on=POISON)
    await wait_for_models(Client(nc), "fake")
    sub = await publish_poison(nc, "poison-2")

    async def dead_lettered() -> bool:
        return await dead_letter_count(nc) == 1

    await eventually(dead_lettered, what="the poison request in IRIS_DLQ")
    assert buggy.poll() == CRASH_EXIT_CODE

    listed = await asyncio.to_thread(iris_cli, "dlq", "ls", "--nats", url)
    assert listed.returncode == 0, listed.stderr
    assert "poison-2" in listed.stdout and "worker_failed" in listed.stdout and POISON not in listed.stdout
    (row,) = json.loads((await asyncio.to_thread(iris_cli, "dlq", "ls", "--nats", url, "--json")).stdout)
    assert row["request_id"] == "poison-2" and row["attempts"] == 1 and row["workload"] == "default"

    start_fake_worker(processes, url, "fixed")  # the fixed worker build: no crash on the poison prompt
    await wait_for_models(Client(nc), "fake")
    replayed = await asyncio.to_thread(iris_cli, "dlq", "replay", str(row["dlq_seq"]), "--nats", url)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "poison-2-replay-" in replayed.stdout

    # The first error was read by nobody yet; the replay's result arrives on the same original inbox.
    results: list[bytes] = []

    async def result_arrived() -> bool:
        results.extend(data for kind, data in await final_replies(sub) if kind == h.KIND_RESULT)
        return bool(results)

    await eventually(result_arrived, what="the replayed request's result on the original inbox")
    result = result_decoder.decode(results[0])
    assert result.worker == "fixed" and result.usage.completion_tokens == 5
    assert await dead_letter_count(nc) == 0
    await wait_stream_empty(nc)
    again = await asyncio.to_thread(iris_cli, "dlq", "replay", str(row["dlq_seq"]), "--nats", url)
    assert again.returncode == 1 and "no such dead letter" in again.stdout

    await replay_an_unparseable_request(nc, url, dead_lettered)


async def replay_an_unparseable_request(nc: NATS, url: str, dead_lettered: Callable[[], Awaitable[bool]]) -> None:
    """Replayed with --wait: the error comes back to the terminal, and it is a dead letter again under a
    new sequence."""
    headers = {h.REPLY_TO: nc.new_inbox(), h.PRIORITY: "high", h.MSG_ID: "bad-priority"}
    await nc.jetstream().publish("iris.req.fake.default", b'{"prompt": "hi"}', headers=headers)
    await eventually(dead_lettered, what="the unparseable request in IRIS_DLQ")
    (bad,) = await list_dead_letters(nc)
    waited = await asyncio.to_thread(iris_cli, "dlq", "replay", "--all", "--wait", "--nats", url)
    assert waited.returncode == 1 and "error invalid_request" in waited.stdout and "Iris-Priority" in waited.stdout
    await eventually(dead_lettered, what="the replayed request back in IRIS_DLQ")
    (back,) = await list_dead_letters(nc)
    assert back.dlq_seq > bad.dlq_seq and back.request_id == f"bad-priority-replay-{bad.dlq_seq}"
