"""SIGHUP makes a running broker re-read its config: a new max_queue applies without a restart."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from iris.launch.nats_server import NatsServer
from iris.sdk.client import Client
from schemas.errors import QueueFull
from tests.conftest import Processes
from tests.integration.services import eventually, wait_for_models


async def test_sighup_reloads_limits(nats_server: NatsServer, nc: NATS, processes: Processes, tmp_path: Path) -> None:
    config = tmp_path / "iris.toml"
    config.write_text("[broker]\nmax_queue = 1\n")
    broker = processes.start("broker", "broker", "--nats", nats_server.url, "--config", str(config))
    processes.start_fake_worker(nats_server.url, "worker", tokens_per_s=20)
    client = Client(nc)
    await wait_for_models(client, "fake")

    running = client.generate("occupy", model="fake", max_tokens=200)
    first_chunk = asyncio.ensure_future(anext(aiter(running)))
    await asyncio.wait_for(first_chunk, 30)
    queued = client.generate("waits", model="fake", max_tokens=1, stream=False)
    waiting = asyncio.ensure_future(queued.finish())

    async def in_queue() -> bool:
        return bool(queued.queue_updates)

    await eventually(in_queue, what="the second request to queue")
    with pytest.raises(QueueFull):
        await client.complete("over the limit", model="fake", max_tokens=1)

    config.write_text("[broker]\nmax_queue = 5\n")
    broker.send_signal(signal.SIGHUP)

    async def reloaded() -> bool:
        return '"config reloaded"' in processes.log("broker")

    await eventually(reloaded, what="the broker to reload its config")
    now_fits = client.generate("fits now", model="fake", max_tokens=1, stream=False)
    admitted = asyncio.ensure_future(now_fits.finish())

    async def admitted_to_queue() -> bool:
        return bool(now_fits.queue_updates) or admitted.done()

    await eventually(admitted_to_queue, what="the request to be admitted under the new limit")
    await running.cancel()
    assert (await waiting).usage.completion_tokens == 1
    assert (await admitted).usage.completion_tokens == 1
