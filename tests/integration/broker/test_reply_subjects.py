"""Hostile reply subjects without accounts (plain `iris up`): a request whose `Iris-Reply-To` names a subject
outside the reply prefixes is refused with `invalid_request` naming the header, dead-lettered, and nothing
is ever published there; the leader stays leader and the next request is served. The worker checks too."""

from __future__ import annotations

import time

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from gpu_worker.engines.fake import FakeEngine
from iris.launch.nats_server import NatsServer
from iris.ops.dead_letters import list_dead_letters
from iris.sdk.client import Client
from schemas import headers as h
from schemas.subjects import BROKER_BUCKET, LEADER_KEY
from tests.integration.services import broker, eventually, wait_for_models, wait_stream_empty, worker

HOSTILE_REPLIES = [
    f"$KV.{BROKER_BUCKET}.{LEADER_KEY}",
    "$KV.IRIS_LEASES.999999",
    "$JS.API.STREAM.PURGE.IRIS_REQUESTS",
    "iris.worker.hb.fake.x",
    "iris.broker.stats",
    "iris.worker.w1.lease",
    "_INBOX",  # the prefix itself, without a token under it
    "_INBOX..x",  # an empty token
    "evil.inbox",
]


class Snoop:
    """Every message published on the subjects a hostile client named (plain NATS lets anyone listen)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []

    async def record(self, msg: Msg) -> None:
        self.seen.append((msg.subject, dict(msg.headers or {})))

    def replies(self, request_id_prefix: str = "") -> list[str]:
        """Subjects of the Iris replies seen (they carry `Iris-Kind`), for requests whose id has this prefix."""
        return [
            subject
            for subject, headers in self.seen
            if h.KIND in headers and headers.get(h.REQUEST_ID, "").startswith(request_id_prefix)
        ]


async def publish_hostile(nc: NATS, reply_to: str, msg_id: str, subject: str = "iris.req.fake.default") -> None:
    deadline = str(int(time.time() * 1000) + 30_000)
    headers = {h.REPLY_TO: reply_to, h.MSG_ID: msg_id, h.DEADLINE: deadline}
    await nc.jetstream().publish(subject, b'{"prompt": "aim the answer elsewhere", "max_tokens": 3}', headers=headers)


async def test_reply_subjects_outside_the_prefixes_are_refused(nats_server: NatsServer, nc: NATS) -> None:
    snoop = Snoop()
    for subject in HOSTILE_REPLIES:
        await nc.subscribe(subject.replace("..", ".x."), cb=snoop.record)  # "_INBOX..x" is no valid subscription
    await nc.subscribe("_INBOX.>", cb=snoop.record)
    async with broker(nats_server.url) as service, worker(nats_server.url, FakeEngine("fake"), "w1"):
        async with Client(nc) as client:
            await wait_for_models(client, "fake")
            leader_before = await (await nc.jetstream().key_value(BROKER_BUCKET)).get(LEADER_KEY)
            for i, reply_to in enumerate(HOSTILE_REPLIES):
                await publish_hostile(nc, reply_to, f"hostile-{i}")
            await wait_stream_empty(nc)
            letters = await list_dead_letters(nc)
            assert sorted(letter.request_id for letter in letters) == sorted(
                f"hostile-{i}" for i in range(len(HOSTILE_REPLIES))
            )
            assert all(letter.code == "invalid_request" and h.REPLY_TO in letter.reason for letter in letters)
            result = await client.complete("a normal request right after", model="fake", max_tokens=2)
            assert result.usage.completion_tokens == 2
        await nc.flush()
        assert snoop.replies("hostile-") == []
        assert all(subject.startswith("_INBOX.") for subject in snoop.replies())  # the good client's only
        leader = await (await nc.jetstream().key_value(BROKER_BUCKET)).get(LEADER_KEY)
        assert leader.value == leader_before.value == service.broker_id.encode()
        assert service._leadership is not None and service._leadership.leading


async def test_owned_request_replies_only_to_its_owners_inbox(nats_server: NatsServer, nc: NATS) -> None:
    """`iris.req.<model>.<workload>.<owner>` may reply only under `_INBOX.<owner>.`, whoever publishes it."""
    snoop = Snoop()
    await nc.subscribe("_INBOX.>", cb=snoop.record)
    async with broker(nats_server.url), worker(nats_server.url, FakeEngine("fake"), "w1"):
        async with Client(nc) as client:
            await wait_for_models(client, "fake")
            await publish_hostile(nc, "_INBOX.bob.stolen", "not-bobs", subject="iris.req.fake.default.alice")
            inbox = "_INBOX.alice.mine"
            answers = await nc.subscribe(inbox)
            await publish_hostile(nc, inbox, "alices", subject="iris.req.fake.default.alice")
            msg = await answers.next_msg(timeout=20)
            while msg.headers[h.KIND] in (h.KIND_QUEUED, h.KIND_CHUNK):
                msg = await answers.next_msg(timeout=20)
            assert msg.headers[h.KIND] == h.KIND_RESULT
            await wait_stream_empty(nc)
            (letter,) = await list_dead_letters(nc)
            assert letter.request_id == "not-bobs" and "_INBOX.alice." in letter.reason
        assert snoop.replies("not-bobs") == [] and not [s for s, _ in snoop.seen if s.startswith("_INBOX.bob.")]


async def test_worker_refuses_a_lease_whose_reply_subject_it_does_not_allow(nats_server: NatsServer, nc: NATS) -> None:
    """A broker configured (wrongly) to allow `evil.` hands the lease out; the worker, which allows only
    `_INBOX.`, dead-letters it without running it or answering there."""
    snoop = Snoop()
    await nc.subscribe("evil.>", cb=snoop.record)
    async with (
        broker(nats_server.url, reply_prefixes="_INBOX.,evil."),
        worker(nats_server.url, FakeEngine("fake"), "w1"),
    ):
        async with Client(nc) as client:
            await wait_for_models(client, "fake")
            await publish_hostile(nc, "evil.inbox", "past-the-broker")
            await wait_stream_empty(nc)

            async def dead_lettered() -> bool:
                return [letter.request_id for letter in await list_dead_letters(nc)] == ["past-the-broker"]

            await eventually(dead_lettered, what="the worker to dead-letter the lease")
            (letter,) = await list_dead_letters(nc)
            assert letter.code == "invalid_request" and h.REPLY_TO in letter.reason
            assert (await client.complete("next", model="fake", max_tokens=2)).usage.completion_tokens == 2
        await nc.flush()
        kinds = {headers.get(h.KIND) for _, headers in snoop.seen}
        assert kinds <= {h.KIND_QUEUED}, kinds  # the broker's queue update at most; no chunk, result or error


@pytest.mark.parametrize("prefixes", ["", "$KV.", "iris.", ">", "_INBOX", "a b."])
def test_reply_prefixes_that_would_open_too_much_are_refused_at_start(prefixes: str) -> None:
    from broker.config import BrokerConfig
    from gpu_worker.config import WorkerConfig

    for config_type in (BrokerConfig, WorkerConfig):
        with pytest.raises(ValueError, match="prefix"):
            config_type(reply_prefixes=prefixes)


async def test_micro_endpoints_answer_only_under_the_reply_prefixes(nats_server: NatsServer, nc: NATS) -> None:
    """`iris.api.*` (gateway) and `iris.admit.*` (broker) answer on the caller's NATS reply subject: one
    naming the leader key, a stream API or a worker subject is ignored, not answered there."""
    from gateway.config import GatewayConfig
    from gateway.service import GatewayService

    snoop = Snoop()
    for subject in HOSTILE_REPLIES[:4]:
        await nc.subscribe(subject, cb=snoop.record)
    async with (
        broker(nats_server.url, max_concurrency=1) as service,
        worker(nats_server.url, FakeEngine("fake"), "w1"),
        GatewayService(GatewayConfig(nats_url=nats_server.url, http_port=0)),
    ):
        async with Client(nc) as client:
            await wait_for_models(client, "fake")
        leader_before = await (await nc.jetstream().key_value(BROKER_BUCKET)).get(LEADER_KEY)
        body = b'{"prompt": "answer elsewhere", "max_tokens": 2}'
        for reply_to in HOSTILE_REPLIES[:4]:
            await nc.publish("iris.api.generate", body, reply=reply_to)
            await nc.publish("iris.admit.fake", b'{"workload": "default"}', reply=reply_to)
            await nc.publish("iris.admit.end", b'{"ticket_id": "x"}', reply=reply_to)
        answer = await nc.request("iris.api.generate", body, timeout=20)  # a proper caller, after them
        assert b'"completion_tokens":2' in answer.data
        await nc.flush()
        renewals = "Nats-Expected-Last-Subject-Sequence"  # the leader's own compare-and-set writes of its key
        assert [subject for subject, headers in snoop.seen if renewals not in headers] == []
        leader = await (await nc.jetstream().key_value(BROKER_BUCKET)).get(LEADER_KEY)
        assert leader.value == leader_before.value == service.broker_id.encode()
