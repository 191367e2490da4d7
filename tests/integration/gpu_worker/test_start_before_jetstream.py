"""A worker that starts before JetStream can answer (a fresh cluster still electing its meta leader, as
every container of the compose stack starts at once) waits for it: it must not exit on the first API
timeout (in the compose stack both workers died once at `deploy/up.sh`, and only the restart policy
brought them back)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import structlog

from gpu_worker.config import WorkerConfig
from gpu_worker.engines.fake import FakeEngine
from gpu_worker.service import WorkerService
from iris.launch.nats_server import NatsCluster
from schemas.subjects import MODEL_BUCKET
from tests.integration.services import broker, eventually

pytestmark = pytest.mark.slow  # a cluster in real processes


async def test_a_worker_started_before_the_cluster_has_quorum_waits_for_it(tmp_path: Path) -> None:
    cluster = NatsCluster(tmp_path / "cluster", 3, log_dir=tmp_path)
    lone = cluster.nodes[0].start()  # one node of three: no JetStream meta leader yet
    config = WorkerConfig(nats_url=lone.url, worker_id="w1", engine="fake")
    service = WorkerService(config, FakeEngine())
    try:
        with structlog.testing.capture_logs() as logs:
            starting = asyncio.create_task(service.start())

            async def waiting() -> bool:
                if starting.done():
                    raise AssertionError(f"the worker's start ended before JetStream was up: {starting.exception()!r}")
                return any(entry["event"] == "waiting for JetStream" for entry in logs)

            await eventually(waiting, timeout_s=60, what="the worker to wait for JetStream")
        for node in cluster.nodes[1:]:
            node.start()
        async with broker(cluster.url, replicas=3):
            await asyncio.wait_for(starting, 120)
            cards = await service.nc.jetstream().key_value(MODEL_BUCKET)
            assert (await cards.get("fake")).value  # its card too, for /api/show
    finally:
        await service.stop()
        cluster.stop()
