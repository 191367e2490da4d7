"""The least-privilege NATS users of deploy/: Iris works through them, and a client can neither read
another client's replies (live or stored) nor consume the request stream or its bodies directly."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import nats
import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from gateway.broker_leader import BrokerLeader
from gateway.config import GatewayConfig
from gateway.model_cards import ModelCards
from gateway.service import GatewayService
from gpu_worker.engines.fake import FakeEngine
from iris.launch.nats_server import NatsServer
from iris.ops.dead_letters import list_dead_letters
from iris.sdk.client import Client
from runtime.answers import fetch_final
from runtime.connection import connect
from schemas import headers as h
from schemas.errors import Cancelled, ErrorCode
from schemas.messages import error_decoder, result_decoder
from schemas.subjects import (
    BROKER_BUCKET,
    JS_ANSWER_GET,
    JS_DIRECT_GET,
    LEADER_KEY,
    LEASE_BUCKET,
    REQUEST_STREAM,
    answer_get_subject,
    answer_subject,
    cancel_subject,
    live_subject,
    request_subject,
)
from tests.integration.services import broker, eventually, wait_for_models, wait_stream_empty, worker

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
USERS = ("broker", "worker", "gateway", "alice", "bob", "sys")


@pytest.fixture
def secured(tmp_path: Path) -> tuple[NatsServer, dict[str, str]]:
    passwords = {user: secrets.token_hex(8) for user in USERS}
    env = {f"IRIS_NATS_{user.upper()}_PASSWORD": password for user, password in passwords.items()}
    server = NatsServer(
        tmp_path / "nats", log_file=tmp_path / "nats.log", config_file=DEPLOY / "nats-auth.conf", env=env
    )
    server.start()
    yield server, {user: f"nats://{user}:{pw}@127.0.0.1:{server.port}" for user, pw in passwords.items()}
    server.stop()


async def test_clients_are_isolated_and_iris_still_works(secured: tuple[NatsServer, dict[str, str]]) -> None:
    _, url = secured
    violations: list[str] = []

    async def on_error(exc: Exception) -> None:
        violations.append(str(exc))

    async with (
        broker(url["broker"]),
        worker(url["worker"], FakeEngine("fake"), "w1"),
        GatewayService(GatewayConfig(nats_url=url["gateway"], http_port=0)),
        await Client.connect(url["alice"]) as alice,
        await Client.connect(url["bob"]) as bob,
    ):
        snoop = await nats.connect(url["alice"], error_cb=on_error)  # alice, trying to read bob's replies
        stolen: list[bytes] = []

        async def steal(msg: nats.aio.msg.Msg) -> None:
            stolen.append(msg.data)

        await snoop.subscribe("_INBOX.bob.>", cb=steal)
        await snoop.subscribe("_INBOX.>", cb=steal)
        await snoop.flush()

        result = await bob.complete("secret question", model="fake", max_tokens=4)
        assert result.usage.completion_tokens == 4
        assert (await alice.complete("my own question", model="fake", max_tokens=3)).usage.completion_tokens == 3
        await snoop.flush()
        assert stolen == []
        gateway_nc = await connect(url["gateway"], "iris-gateway")
        assert await BrokerLeader(gateway_nc).leader() is not None  # /readyz may read who leads
        card = await ModelCards(gateway_nc).card("fake")  # /api/show may read the card the worker wrote
        assert card is not None and card.family == "fake"
        await gateway_nc.close()
        assert sum("permissions violation for subscription" in v for v in violations) == 2

        js = snoop.jetstream(timeout=1.0)
        with pytest.raises((NatsTimeout, NoRespondersError, nats.js.errors.Error)):
            await js.subscribe("iris.req.>", stream=REQUEST_STREAM, durable="steal")
        with pytest.raises((NatsTimeout, NoRespondersError)):
            await snoop.request(JS_DIRECT_GET, b'{"seq": 1}', timeout=1)
        with pytest.raises((NatsTimeout, NoRespondersError, nats.js.errors.Error)):
            await js.stream_info(REQUEST_STREAM)

        async def publish_refused() -> bool:
            return any("permissions violation for publish" in v for v in violations)

        await eventually(publish_refused, what="the server to refuse the JetStream API calls")
        await snoop.close()


async def test_dead_letters_move_under_least_privilege(secured: tuple[NatsServer, dict[str, str]]) -> None:
    """A body the worker cannot parse is dead-lettered by the `worker` user; its client gets the error."""
    _, url = secured
    async with (
        broker(url["broker"]),
        worker(url["worker"], FakeEngine("fake"), "w1"),
        await Client.connect(url["alice"]) as alice,
    ):
        await wait_for_models(alice, "fake")
        inbox = "_INBOX.alice.dlq-probe"
        answers = await alice.nc.subscribe(inbox)
        headers = {h.REPLY_TO: inbox, h.MSG_ID: "dlq-probe"}
        await alice.nc.jetstream().publish(request_subject("fake", "default", "alice"), b"{not json", headers=headers)
        answer = await answers.next_msg(timeout=30)
        while (answer.headers or {}).get(h.KIND) == h.KIND_QUEUED:
            answer = await answers.next_msg(timeout=30)
        assert (answer.headers or {}).get(h.KIND) == h.KIND_ERROR
        assert error_decoder.decode(answer.data).code == ErrorCode.INVALID_REQUEST
        async with await Client.connect(url["broker"]) as operator:
            letters = await list_dead_letters(operator.nc)
        assert [letter.request_id for letter in letters] == ["dlq-probe"]


async def test_hostile_reply_subjects_are_refused_under_least_privilege(
    secured: tuple[NatsServer, dict[str, str]],
) -> None:
    """Alice aims Iris's replies at subjects the services may publish to and she may not: each request is
    refused (`invalid_request` naming `Iris-Reply-To`, dead-lettered), nothing lands there, the leader
    stays leader, and her next request is served."""
    _, url = secured
    hostile = [
        f"$KV.{BROKER_BUCKET}.{LEADER_KEY}",
        f"$KV.{LEASE_BUCKET}.999999",
        f"$JS.API.STREAM.PURGE.{REQUEST_STREAM}",
        "iris.worker.hb.fake.x",
        "_INBOX.bob.stolen",  # another user's inbox
    ]
    async with (
        broker(url["broker"]) as service,
        worker(url["worker"], FakeEngine("fake"), "w1"),
        await Client.connect(url["alice"]) as alice,
        await Client.connect(url["bob"]) as bob,
        await Client.connect(url["broker"]) as operator,
    ):
        await wait_for_models(alice, "fake")
        bobs_inbox = await bob.nc.subscribe("_INBOX.bob.>")
        heartbeat_x = await alice.nc.subscribe("iris.worker.hb.fake.x")
        leader_kv = await operator.nc.jetstream().key_value(BROKER_BUCKET)
        leader_before = await leader_kv.get(LEADER_KEY)
        deadline = str(int(time.time() * 1000) + 30_000)
        for i, reply_to in enumerate(hostile):
            headers = {h.REPLY_TO: reply_to, h.MSG_ID: f"hostile-{i}", h.DEADLINE: deadline}
            body = b'{"prompt": "answer elsewhere", "max_tokens": 3}'
            await alice.nc.jetstream().publish(request_subject("fake", "default", "alice"), body, headers=headers)
        await wait_stream_empty(operator.nc)
        letters = await list_dead_letters(operator.nc)
        assert sorted(letter.request_id for letter in letters) == [f"hostile-{i}" for i in range(len(hostile))]
        assert all(letter.code == "invalid_request" and h.REPLY_TO in letter.reason for letter in letters)
        assert (await alice.complete("and now a normal one", model="fake", max_tokens=2)).usage.completion_tokens == 2
        await bob.nc.flush()
        await alice.nc.flush()
        assert bobs_inbox.pending_msgs == 0 and heartbeat_x.pending_msgs == 0
        leader = await leader_kv.get(LEADER_KEY)
        assert leader.value == leader_before.value == service.broker_id.encode()
        assert service._leadership is not None and service._leadership.leading
        leases = await operator.nc.jetstream().key_value(LEASE_BUCKET)
        with pytest.raises(nats.js.errors.KeyNotFoundError):
            await leases.get("999999")


async def test_a_user_cannot_cancel_another_users_request(secured: tuple[NatsServer, dict[str, str]]) -> None:
    """Bob knows the ids of Alice's running and queued requests: his cancels (on his own cancel subject;
    the server refuses him hers) change nothing. Alice's own cancel works at once."""
    _, url = secured
    violations: list[str] = []

    async def on_error(exc: Exception) -> None:
        violations.append(str(exc))

    engine = FakeEngine("fake", tokens_per_s=20)
    async with (
        broker(url["broker"]) as service,
        worker(url["worker"], engine, "w1"),
        await Client.connect(url["alice"]) as alice,
        await Client.connect(url["bob"], error_cb=on_error) as bob,
    ):
        await wait_for_models(alice, "fake")
        running = alice.generate("a long answer", model="fake", max_tokens=60, idempotency_key="alice-running")
        chunks = aiter(running)
        await anext(chunks)  # it runs
        queued = alice.generate("waits its turn", model="fake", max_tokens=2, idempotency_key="alice-queued")
        waiting = asyncio.ensure_future(queued.finish())

        async def in_queue() -> bool:
            return bool(queued.queue_updates)

        await eventually(in_queue, what="alice's second request to be queued")
        await _cancel_as(bob, ("alice-running", "alice-queued"))

        async def refused() -> bool:
            return sum("permissions violation for publish" in v for v in violations) >= 2

        await eventually(refused, what="the server to refuse bob's cancels on alice's and the plain subject")
        # Bob's own request passes through the broker after his cancels: they have all been heard by then.
        assert (await bob.complete("mine", model="fake", max_tokens=1)).usage.completion_tokens == 1
        assert not waiting.done() or (await waiting).usage.completion_tokens == 2
        async for _ in chunks:  # alice's running request streams to its end
            pass
        assert running.result is not None and running.result.usage.completion_tokens == 60
        assert (await waiting).usage.completion_tokens == 2

        third = alice.generate("cancel me", model="fake", max_tokens=1000, idempotency_key="alice-own")
        own = aiter(third)
        await anext(own)
        await third.cancel()
        with pytest.raises(Cancelled):
            async for _ in own:
                pass
        await _drained(service)


async def _cancel_as(bob: Client, request_ids: tuple[str, ...]) -> None:
    """Bob cancels on his own subject (allowed to publish, not to cancel), on Alice's and on the plain one
    (both refused by the server)."""
    for request_id in request_ids:
        await bob.nc.publish(cancel_subject(request_id, "bob"), b"")
        await bob.nc.publish(cancel_subject(request_id, "alice"), b"")
        await bob.nc.publish(cancel_subject(request_id), b"")
    await bob.nc.flush()


async def _drained(service: object) -> bool:
    async def idle() -> bool:
        return service.scheduler.running("fake") == 0  # type: ignore[attr-defined]

    await eventually(idle, timeout_s=10, what="the cancelled lease to end")
    return True


async def test_a_user_reads_only_its_own_stored_answers(secured: tuple[NatsServer, dict[str, str]]) -> None:
    """Alice's retry gets her stored answer; Bob can neither direct-get it nor listen to her live replies
    (the server refuses both), and his own answers work the same way for him."""
    _, url = secured
    violations: list[str] = []

    async def on_error(exc: Exception) -> None:
        violations.append(str(exc))

    engine = FakeEngine("fake")
    async with (
        broker(url["broker"]),
        worker(url["worker"], engine, "w1"),
        await Client.connect(url["alice"]) as alice,
        await Client.connect(url["bob"], error_cb=on_error) as bob,
    ):
        await wait_for_models(alice, "fake")
        first = await alice.complete("alice's secret", model="fake", max_tokens=4, idempotency_key="alice-answer")
        again = await alice.complete("alice's secret", model="fake", max_tokens=4, idempotency_key="alice-answer")
        assert again == first and engine.generations == 1
        assert await fetch_final(alice.nc, "alice-answer", "alice") is not None  # her own, by direct get

        with pytest.raises((NatsTimeout, NoRespondersError)):
            await bob.nc.request(answer_get_subject("alice-answer", "alice"), b"", timeout=1)
        with pytest.raises((NatsTimeout, NoRespondersError)):
            await bob.nc.request(f"{JS_ANSWER_GET}.{answer_subject('alice-answer')}", b"", timeout=1)
        overheard = await bob.nc.subscribe(live_subject("alice-live", "alice"))
        running = alice.generate("streamed to alice", model="fake", max_tokens=5, idempotency_key="alice-live")
        assert len([chunk async for chunk in running]) == 5
        await bob.nc.flush()
        assert overheard.pending_msgs == 0

        mine = await bob.complete("bob's own", model="fake", max_tokens=2, idempotency_key="bob-answer")
        assert await bob.complete("bob's own", model="fake", max_tokens=2, idempotency_key="bob-answer") == mine

        async def refused() -> bool:
            publishes = sum("permissions violation for publish" in v for v in violations)
            return publishes >= 2 and any("permissions violation for subscription" in v for v in violations)

        await eventually(refused, what="the server to refuse bob's reads of alice's answers")


async def test_two_users_with_the_same_idempotency_key_get_their_own_answers(
    secured: tuple[NatsServer, dict[str, str]],
) -> None:
    """A key is the caller's own: Bob picking the key Alice used neither joins her request nor waits for an
    answer that is not his; his request runs and his retry gets his answer, hers gets hers."""
    _, url = secured
    engine = FakeEngine("fake")
    async with (
        broker(url["broker"]),
        worker(url["worker"], engine, "w1"),
        await Client.connect(url["alice"]) as alice,
        await Client.connect(url["bob"]) as bob,
    ):
        await wait_for_models(alice, "fake")
        hers = await alice.complete("alice asks", model="fake", max_tokens=3, idempotency_key="order-1")
        his = await bob.complete("bob asks", model="fake", max_tokens=3, idempotency_key="order-1", deadline_s=10)
        assert his.text != hers.text and engine.generations == 2
        assert await bob.complete("bob asks", model="fake", max_tokens=3, idempotency_key="order-1") == his
        assert await alice.complete("alice asks", model="fake", max_tokens=3, idempotency_key="order-1") == hers
        assert engine.generations == 2
        stored = await fetch_final(bob.nc, "order-1", "bob")
        assert stored is not None and result_decoder.decode(stored.data) == his
