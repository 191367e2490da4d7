"""The leader's tick and stats loops outlive any failure: a reply publish, a stream delete and a KV delete
that fail (as they do with a full buffer while reconnecting, or retries exhausted) are logged and the
loops go on, so later requests still get `deadline_exceeded` and `iris top` still gets its stats."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from nats.aio.client import Client as NATS

import broker.service
import broker.term
from gpu_worker.engines.fake import FakeEngine
from iris.launch.nats_server import NatsServer
from iris.sdk.client import Client
from schemas.subjects import BROKER_STATS_SUBJECT
from tests.integration.services import broker as run_broker
from tests.integration.services import eventually, worker


class FailsOnce:
    """Wraps an async call so that its first call after `arm()` raises, as a broken connection would."""

    def __init__(self, call: Callable[..., Any]) -> None:
        self.call, self.armed, self.fired = call, False, 0

    def arm(self) -> None:
        self.armed = True

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.armed:
            self.armed = False
            self.fired += 1
            raise ConnectionError("injected failure")
        return await self.call(*args, **kwargs)


async def expiring_request(nc: NATS, name: str, deadline_s: float) -> Any:
    """A raw request with a short deadline; returns the subscription its replies come to."""
    inbox = f"_INBOX.guard.{name}"
    sub = await nc.subscribe(inbox)
    headers = {
        "Iris-Reply-To": inbox,
        "Nats-Msg-Id": name,
        "Iris-Deadline": str(int(time.time() * 1000 + deadline_s * 1000)),
    }
    await nc.jetstream().publish("iris.req.fake.default", b'{"prompt": "x", "max_tokens": 1}', headers=headers)
    return sub


async def final_error(sub: Any) -> str:
    while True:
        msg = await sub.next_msg(timeout=10)
        if msg.headers.get("Iris-Kind") == "error":
            return str(json.loads(msg.data)["code"])


async def test_tick_and_stats_loops_survive_failing_io(
    nats_server: NatsServer, nc: NATS, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish = FailsOnce(broker.term.send_final)
    delete = FailsOnce(broker.term.delete_request)
    monkeypatch.setattr(broker.term, "send_final", publish)
    monkeypatch.setattr(broker.term, "delete_request", delete)
    engine = FakeEngine("fake", tokens_per_s=10)
    async with run_broker(nats_server.url) as service, worker(nats_server.url, engine, "w1"):
        assert service._kv is not None
        kv_delete = FailsOnce(service._kv.delete)
        monkeypatch.setattr(service._kv, "delete", kv_delete)
        snapshot = service.metrics.snapshot
        snapshot_fails = {"armed": True}

        def failing_snapshot(*args: Any, **kwargs: Any) -> Any:
            if snapshot_fails.pop("armed", False):
                raise RuntimeError("injected stats failure")
            return snapshot(*args, **kwargs)

        monkeypatch.setattr(service.metrics, "snapshot", failing_snapshot)
        busy = asyncio.ensure_future(Client(nc).complete("occupy", model="fake", max_tokens=100))
        await eventually(lambda: _generating(engine), what="the only slot taken")

        first = [await expiring_request(nc, f"first-{i}", deadline_s=1.0) for i in range(3)]
        await eventually(lambda: _waiting(service, 3), what="three requests queued")
        for failure in (publish, delete, kv_delete):
            failure.arm()
        await eventually(lambda: _fired(publish, delete, kv_delete), what="each injected failure")
        assert "deadline_exceeded" in [await final_error(sub) for sub in first[1:]]

        later = await expiring_request(nc, "later", deadline_s=1.0)
        assert await final_error(later) == "deadline_exceeded"  # the tick loop still runs

        stats = await nc.subscribe(BROKER_STATS_SUBJECT)
        await stats.next_msg(timeout=10)  # the stats loop too, after its own failure
        assert "armed" not in snapshot_fails
        busy.cancel()


async def _generating(engine: FakeEngine) -> bool:
    return engine.generations == 1


async def _waiting(service: broker.service.BrokerService, count: int) -> bool:
    return service.scheduler.waiting("fake") == count


async def _fired(*failures: FailsOnce) -> bool:
    return all(failure.fired for failure in failures)
