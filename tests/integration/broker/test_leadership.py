"""Leader election on a real nats-server: one leader at a time, a clean stop hands over at once, a
leader whose key someone else took is deposed at its next renewal (but not for its own renewal whose
answer came late), and a silent leader's key expires."""

from __future__ import annotations

import pytest
import structlog
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeout

from broker.leadership import Leadership
from broker.lease_records import LeaseRecords
from gpu_worker.engines.fake import FakeEngine
from iris.launch.nats_server import NatsServer
from iris.sdk.client import Client
from schemas.messages import Lease
from schemas.subjects import BROKER_BUCKET, LEADER_KEY
from tests.integration.services import broker, eventually, wait_for_models, worker

TTL_S = 1.0


class Candidate:
    def __init__(self, nc: NATS, name: str) -> None:
        self.events: list[str] = []
        self.leadership = Leadership(
            nc.jetstream(),
            name,
            ttl_s=TTL_S,
            replicas=1,
            on_elected=lambda: self.events.append("elected"),
            on_deposed=lambda reason: self.events.append(f"deposed: {reason}"),
            log=structlog.get_logger(),
        )


async def test_one_leader_then_handover_on_stop(nc: NATS) -> None:
    a, b = Candidate(nc, "a"), Candidate(nc, "b")
    await a.leadership.start()
    await b.leadership.start()
    assert a.events == ["elected"] and a.leadership.leading
    assert b.events == [] and not b.leadership.leading
    await a.leadership.stop()

    async def b_leads() -> bool:
        return b.leadership.leading

    await eventually(b_leads, what="b elected after a handed the key back")
    entry = await (await nc.jetstream().key_value(BROKER_BUCKET)).get(LEADER_KEY)
    assert entry.value == b"b"
    await b.leadership.stop()


async def test_deposed_when_another_holds_the_key(nc: NATS) -> None:
    a = Candidate(nc, "a")
    await a.leadership.start()
    kv = await nc.jetstream().key_value(BROKER_BUCKET)
    await kv.put(LEADER_KEY, b"intruder")  # as if a's term had lapsed and someone else won

    async def deposed() -> bool:
        return any(e.startswith("deposed") for e in a.events)

    await eventually(deposed, what="a deposed at its next renewal")
    assert not a.leadership.leading
    await a.leadership.stop()
    assert (await kv.get(LEADER_KEY)).value == b"intruder"  # a deposed leader never deletes another's key


async def test_a_late_answered_renewal_that_was_stored_keeps_the_lead(nc: NATS) -> None:
    a = Candidate(nc, "a")
    await a.leadership.start()
    assert a.leadership._task is not None
    a.leadership._task.cancel()  # renewals by hand from here
    kv = await nc.jetstream().key_value(BROKER_BUCKET)
    assert a.leadership.term.revision is not None
    stored = await kv.update(LEADER_KEY, b"a", last=a.leadership.term.revision)  # its answer never reached a
    await a.leadership._renew()
    assert a.events == ["elected"] and a.leadership.leading
    assert a.leadership.term.revision is not None and a.leadership.term.revision > stored
    await a.leadership.stop()


async def test_silent_leader_key_expires(nc: NATS) -> None:
    a, b = Candidate(nc, "a"), Candidate(nc, "b")
    await a.leadership.start()
    assert a.leadership._task is not None
    a.leadership._task.cancel()  # a stops renewing, as if its process froze or died
    await b.leadership.start()

    async def b_leads() -> bool:
        return b.leadership.leading

    await eventually(b_leads, what="b elected once a's key expired")
    assert not a.leadership.leading  # a's own clock ended its term before the key expired
    await b.leadership.stop()


async def test_a_term_that_fails_to_start_is_started_again(
    nats_server: NatsServer, nc: NATS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Elected while JetStream is electing its own leaders (a node just died): reading `IRIS_LEASES` times
    out. The broker must not stay a leader that schedules nothing: it starts the term again."""
    real_read_all = LeaseRecords.read_all
    failures = [NatsTimeout()]

    async def flaky_read_all(self: LeaseRecords) -> list[Lease]:
        if failures:
            raise failures.pop()
        return await real_read_all(self)

    monkeypatch.setattr(LeaseRecords, "read_all", flaky_read_all)
    async with (
        broker(nats_server.url) as service,
        worker(nats_server.url, FakeEngine("fake"), "w1"),
    ):
        client = Client(nc)
        await wait_for_models(client, "fake")
        result = await client.complete("still scheduled?", model="fake", max_tokens=3)
        assert result.usage.completion_tokens == 3
        assert not failures and service.term is not None and service.term.scheduling
