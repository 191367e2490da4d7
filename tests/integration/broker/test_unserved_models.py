"""Requests for a model no worker serves: `no_capacity` as soon as the broker knows (immediately after its
start-up grace, or at once after it), and nothing of them is left in the broker."""

from __future__ import annotations

import pytest
from nats.aio.client import Client as NATS

from gpu_worker.engines.fake import FakeEngine
from iris.launch.nats_server import NatsServer
from iris.sdk.client import Client
from runtime.clock import now_ms
from schemas.errors import NoCapacity
from tests.integration.services import broker, eventually, wait_stream_empty, worker


async def test_request_for_a_model_without_workers_gets_no_capacity_once_the_broker_knows(
    nats_server: NatsServer, nc: NATS
) -> None:
    """Published while a fresh broker still learns heartbeats, it waits only for that grace to end."""
    async with broker(nats_server.url) as service, worker(nats_server.url, FakeEngine("fake"), "w1"):
        client = Client(nc)
        assert not service.scheduler._warmed_up(now_ms())  # the broker is still learning heartbeats
        with pytest.raises(NoCapacity, match="no worker serves model 'nosuch'"):
            await client.complete("anyone?", model="nosuch", max_tokens=1, deadline_s=60)
        with pytest.raises(NoCapacity):  # after the grace: refused on arrival
            await client.complete("still nobody?", model="nosuch", max_tokens=1, deadline_s=60)
        assert (await client.complete("served", model="fake", max_tokens=1)).usage.completion_tokens == 1
        await wait_stream_empty(nc)

        async def forgotten() -> bool:  # the lease end reaches the broker a moment after the stream empties
            return set(service.scheduler.pools) == {"fake"} and not service.scheduler._model_of

        await eventually(forgotten, what="the broker holding nothing of the requests")
