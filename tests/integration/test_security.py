"""The least-privilege NATS users of deploy/: Iris works through them, and a client can neither read
another client's replies nor consume the request stream or its bodies directly."""

from __future__ import annotations

import secrets
from pathlib import Path

import nats
import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from gateway.broker_leader import BrokerLeader
from gateway.config import GatewayConfig
from gateway.service import GatewayService
from gpu_worker.fake_engine import FakeEngine
from iris.client import Client
from iris.dead_letters import list_dead_letters
from iris.nats_server import NatsServer
from schemas import headers as h
from schemas.connection import connect
from schemas.errors import ErrorCode
from schemas.messages import error_decoder
from schemas.subjects import JS_DIRECT_GET, REQUEST_STREAM
from tests.integration.services import broker, eventually, wait_for_models, worker

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
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
        await alice.nc.jetstream().publish("iris.req.fake.default", b"{not json", headers=headers)
        answer = await answers.next_msg(timeout=30)
        while (answer.headers or {}).get(h.KIND) == h.KIND_QUEUED:
            answer = await answers.next_msg(timeout=30)
        assert (answer.headers or {}).get(h.KIND) == h.KIND_ERROR
        assert error_decoder.decode(answer.data).code == ErrorCode.INVALID_REQUEST
        async with await Client.connect(url["broker"]) as operator:
            letters = await list_dead_letters(operator.nc)
        assert [letter.request_id for letter in letters] == ["dlq-probe"]
