"""Cancels always win: one sent before the broker's consumer reached its request (a deep backlog), while
an offer is in flight (refused and re-queued, or accepted by a worker), or while no broker leads, stops
the request before it produces a single token (`schemas.cancels`: stream `IRIS_CANCELS`)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from broker.config import BrokerConfig
from broker.service import BrokerService
from broker.streams import ensure_lease_bucket, ensure_streams
from gpu_worker.engines.fake import FakeEngine
from iris.launch.nats_server import NatsServer
from schemas.messages import (
    Heartbeat,
    Lease,
    LeaseAnswer,
    LeaseOffer,
    encoder,
    lease_answer_decoder,
    lease_offer_decoder,
)
from schemas.subjects import CANCEL_STREAM, cancel_subject, heartbeat_subject, lease_offer_subject
from tests.conftest import Processes
from tests.integration.services import broker, eventually, wait_stream_empty, worker


class Inboxes:
    """Replies of many raw requests on one wildcard subscription: kinds seen and the final error code."""

    def __init__(self) -> None:
        self.kinds: dict[str, Counter[str]] = {}
        self.errors: dict[str, str] = {}

    async def on_reply(self, msg: Msg) -> None:
        name = msg.subject.rsplit(".", 1)[1]
        kind = (msg.headers or {}).get("Iris-Kind", "")
        self.kinds.setdefault(name, Counter())[kind] += 1
        if kind == "error":
            self.errors[name] = json.loads(msg.data)["code"]

    def finals(self, names: list[str]) -> int:
        return sum(1 for n in names if self.kinds.get(n, Counter())["result"] + self.kinds.get(n, Counter())["error"])


async def publish(nc: NATS, name: str, max_tokens: int, stream: bool = False) -> int:
    headers = {
        "Iris-Reply-To": f"_INBOX.cancels.{name}",
        "Nats-Msg-Id": name,
        "Iris-Deadline": str(int(time.time() * 1000) + 150_000),
    }
    body = json.dumps({"prompt": name, "max_tokens": max_tokens, "stream": stream}).encode()
    return (await nc.jetstream().publish("iris.req.fake.default", body, headers=headers)).seq


async def test_cancels_right_after_publish_behind_a_deep_backlog(nats_server: NatsServer, nc: NATS) -> None:
    replies = Inboxes()
    await nc.subscribe("_INBOX.cancels.*", cb=replies.on_reply)
    engine = FakeEngine("fake", slots=4)
    async with broker(nats_server.url), worker(nats_server.url, engine, "w1"):
        backlog = [f"b{i}" for i in range(3000)]
        places = asyncio.Semaphore(256)

        async def one(name: str) -> None:
            async with places:
                await publish(nc, name, max_tokens=1)

        await asyncio.gather(*(one(name) for name in backlog))
        long = [f"long{i}" for i in range(50)]
        for name in long:
            await publish(nc, name, max_tokens=1000, stream=True)
            await nc.publish(cancel_subject(name), b"")

        async def all_answered() -> bool:
            return replies.finals(backlog + long) == len(backlog) + len(long)

        await eventually(all_answered, timeout_s=120, what="every request answered")
        assert {replies.errors.get(name) for name in long} == {"cancelled"}
        assert sum(replies.kinds[name]["chunk"] for name in long) == 0  # not one token
        assert not any(name in replies.errors for name in backlog)
        await wait_stream_empty(nc)


async def test_cancel_while_the_offer_is_refused_is_not_lost(nats_server: NatsServer, nc: NATS) -> None:
    """The test plays the worker: the cancel comes in while the broker waits for the answer to its offer,
    which is a refusal, so the request goes back to the queue; it must not be offered again."""
    replies = Inboxes()
    await nc.subscribe("_INBOX.cancels.*", cb=replies.on_reply)
    offers: list[int] = []

    async def on_offer(msg: Msg) -> None:
        seqs = [lease.stream_seq for lease in lease_offer_decoder.decode(msg.data).leases]
        offers.extend(seqs)
        if len(offers) == 1:
            await nc.publish(cancel_subject("racing"), b"")
            await eventually(lambda: _stored_cancels(nc, 1), what="the cancel stored")
        await msg.respond(encoder.encode(LeaseAnswer(accepted=[], refused=seqs, reason="no free slot")))

    await nc.subscribe(lease_offer_subject("tw"), cb=on_offer)
    async with broker(nats_server.url):
        beating = asyncio.ensure_future(_heartbeats(nc, "tw"))
        await publish(nc, "racing", max_tokens=10)

        async def answered() -> bool:
            return "racing" in replies.errors

        await eventually(answered, timeout_s=15, what="the request's final reply")
        assert replies.errors["racing"] == "cancelled" and len(offers) == 1
        await wait_stream_empty(nc)
        beating.cancel()


async def test_worker_accepting_a_cancelled_lease_runs_nothing(nats_server: NatsServer, nc: NATS) -> None:
    """The cancel reached the worker before the offer did (the broker had not read it yet)."""
    js = nc.jetstream()
    await ensure_streams(js, BrokerConfig())
    await ensure_lease_bucket(js, BrokerConfig())
    replies = Inboxes()
    await nc.subscribe("_INBOX.cancels.*", cb=replies.on_reply)
    engine = FakeEngine("fake")
    async with worker(nats_server.url, engine, "w1") as service:
        seq = await publish(nc, "early", max_tokens=10, stream=True)
        await nc.publish(cancel_subject("early"), b"")
        await eventually(lambda: _known(service.cancels.__contains__, "early"), what="the worker to read the cancel")
        now = int(time.time() * 1000)
        lease = Lease(seq, "early", "fake", "default", "_INBOX.cancels.early", now + 60_000, now, "w1", 1, now)
        reply = await nc.request(lease_offer_subject("w1"), encoder.encode(LeaseOffer([lease])), timeout=5)
        assert lease_answer_decoder.decode(reply.data).accepted == [seq]
        await eventually(lambda: _known(replies.errors.__contains__, "early"), what="the cancelled reply")
        assert replies.errors["early"] == "cancelled" and engine.generations == 0
        await wait_stream_empty(nc)


async def test_cancels_sent_while_no_broker_leads_are_applied_by_the_next(nats_server: NatsServer, nc: NATS) -> None:
    replies = Inboxes()
    await nc.subscribe("_INBOX.cancels.*", cb=replies.on_reply)
    engine = FakeEngine("fake")
    first = BrokerService(BrokerConfig(nats_url=nats_server.url))
    await first.start()
    async with worker(nats_server.url, engine, "w1"):
        await first.stop()  # no leader from here on
        names = [f"gap{i}" for i in range(10)]
        for name in names:
            await publish(nc, name, max_tokens=5)
        for name in names[::2]:
            await nc.publish(cancel_subject(name), b"")
        await eventually(lambda: _stored_cancels(nc, 5), what="the cancels stored")
        async with broker(nats_server.url):

            async def all_answered() -> bool:
                return replies.finals(names) == len(names)

            await eventually(all_answered, timeout_s=30, what="every request answered")
        assert [replies.errors.get(name) for name in names[::2]] == ["cancelled"] * 5
        assert not any(name in replies.errors for name in names[1::2]) and engine.generations == 5


async def _heartbeats(nc: NATS, worker_id: str) -> None:
    while True:
        beat = Heartbeat(worker_id, "fake", 1, 1, [], 0.0, int(time.time() * 1000))
        await nc.publish(heartbeat_subject("fake", worker_id), encoder.encode(beat))
        await asyncio.sleep(0.2)


async def _stored_cancels(nc: NATS, count: int) -> bool:
    return (await nc.jetstream().stream_info(CANCEL_STREAM)).state.messages >= count


async def _known(check: object, name: str) -> bool:
    assert callable(check)
    return bool(check(name))


async def test_cancels_across_a_leader_killed_with_kill_9(
    nats_server: NatsServer, nc: NATS, processes: Processes
) -> None:
    """The leader dies (`kill -9`) with one request running and ten queued; cancels sent before the standby
    takes over stop the running one (its worker reads them) and the queued ones they name (the new term
    reads them before its first offer); the rest run."""
    url = nats_server.url
    replies = Inboxes()
    await nc.subscribe("_INBOX.cancels.*", cb=replies.on_reply)
    engine = FakeEngine("fake", tokens_per_s=20)
    leader = processes.start("broker-a", "broker", "--nats", url, "--broker-id", "a")
    await eventually(lambda: _logged(processes, "broker-a", '"leading"'), what="broker a leading")
    async with worker(url, engine, "w1", slots=1):
        await publish(nc, "running", max_tokens=400, stream=True)  # 20 s of answer: it runs through the kill

        async def running() -> bool:
            return replies.kinds.get("running", Counter())["chunk"] > 0

        await eventually(running, what="the first request to run")
        names = [f"kill{i}" for i in range(10)]
        for name in names:
            await publish(nc, name, max_tokens=3, stream=True)
        leader.kill()
        leader.wait()
        for name in ["running", *names[::2]]:
            await nc.publish(cancel_subject(name), b"")
        await eventually(lambda: _stored_cancels(nc, 6), what="the cancels stored")
        async with broker(url, broker_id="b"):

            async def all_answered() -> bool:
                return replies.finals(["running", *names]) == len(names) + 1

            await eventually(all_answered, timeout_s=60, what="every request answered")
    assert replies.errors.get("running") == "cancelled"
    assert [replies.errors.get(name) for name in names[::2]] == ["cancelled"] * 5
    assert not any(name in replies.errors for name in names[1::2])
    assert all(replies.kinds[name]["chunk"] == 0 for name in names[::2])  # not a single token
    assert all(replies.kinds[name]["chunk"] == 3 for name in names[1::2])


async def _logged(processes: Processes, name: str, text: str) -> bool:
    return text in processes.log(name)
