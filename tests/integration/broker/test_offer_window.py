"""The leader waits on at most `MAX_OFFERS_IN_FLIGHT` unanswered lease offers (`broker.term`): with more
free workers than that and a backlog for all of them, offers go out as answers come back, never to the whole
fleet at once, and every request is offered in the end."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from broker import term
from iris.bench.scale_fleet import publish_backlog
from iris.launch.nats_server import NatsServer
from schemas.messages import Heartbeat, LeaseAnswer, encoder, lease_offer_decoder
from schemas.subjects import heartbeat_subject, lease_offer_subject
from tests.integration.services import broker, eventually

WORKERS = 8
WINDOW = 2


class SlowFleet:
    """`WORKERS` one-slot workers that answer each offer a moment late (accepting it) and then list what they
    took as running; the most offers seen unanswered at once."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.running: dict[str, list[int]] = {f"s{i}": [] for i in range(WORKERS)}
        self.unanswered = 0
        self.most_unanswered = 0
        self.offered: list[int] = []

    async def on_offer(self, msg: Msg) -> None:
        asyncio.ensure_future(self._answer_late(msg))  # every offer is held at once, not one by one

    async def _answer_late(self, msg: Msg) -> None:
        self.unanswered += 1
        self.most_unanswered = max(self.most_unanswered, self.unanswered)
        seqs = [lease.stream_seq for lease in lease_offer_decoder.decode(msg.data).leases]
        await asyncio.sleep(0.3)  # the simulated worker is slow to answer; nothing waits on this pause
        self.running[msg.subject.split(".")[2]] += seqs
        self.offered += seqs
        self.unanswered -= 1
        await msg.respond(encoder.encode(LeaseAnswer(seqs, [])))

    async def beat_forever(self) -> None:
        while True:
            for worker_id, running in self.running.items():
                beat = Heartbeat(worker_id, "fake", 1, 1 - len(running), sorted(running), 0.0, int(time.time() * 1000))
                await self.nc.publish(heartbeat_subject("fake", worker_id), encoder.encode(beat))
            await asyncio.sleep(0.2)


async def test_offers_wait_for_answers_within_the_window(
    nats_server: NatsServer, nc: NATS, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(term, "MAX_OFFERS_IN_FLIGHT", WINDOW)
    fleet = SlowFleet(nc)
    await nc.subscribe(lease_offer_subject("*"), cb=fleet.on_offer)
    beats = asyncio.ensure_future(fleet.beat_forever())
    try:
        async with broker(nats_server.url, worker_timeout_s=5.0):
            await publish_backlog(nc, "fake", WORKERS)

            async def all_offered() -> bool:
                return len(fleet.offered) == WORKERS

            await eventually(all_offered, what=f"all {WORKERS} requests offered")
    finally:
        beats.cancel()
    assert fleet.most_unanswered == WINDOW  # the window filled, and never more
    assert sorted(fleet.offered) == list(range(1, WORKERS + 1))  # each request once
    assert all(len(running) == 1 for running in fleet.running.values())  # one each: every worker was offered
