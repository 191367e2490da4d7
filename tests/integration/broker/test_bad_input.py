"""Bad input over raw NATS: each gets a typed Error on its inbox (when it has one), leaves the request stream
for the dead-letter stream with its reason (unparseable by the broker or by the worker alike), and the broker
and worker go on serving."""

from __future__ import annotations

import pytest
from nats.aio.client import Client as NATS

from gpu_worker.engines.fake import FakeEngine
from iris.launch.nats_server import NatsServer
from iris.ops.dead_letters import list_dead_letters
from iris.sdk.client import Client
from schemas.subjects import DLQ_STREAM
from tests.integration.raw_nats import good_headers, raw_request
from tests.integration.services import broker, wait_stream_empty, worker

CASES = [
    pytest.param("iris.req.fake.default", b"{not json", {}, "malformed JSON", id="malformed-json"),
    pytest.param("iris.req.fake.default", b'{"prompt": "hi", "colour": "red"}', {}, "colour", id="unknown-field"),
    pytest.param(
        "iris.req.fake.default",
        b'{"prompt": "hi", "max_tokens": 1000000000}',
        {},
        "$.max_tokens",
        id="absurd-max-tokens",
    ),
    pytest.param(
        "iris.req.fake.default", b'{"prompt": "hi", "max_tokens": "ten"}', {}, "$.max_tokens", id="wrong-type"
    ),
    pytest.param("iris.req.fake.default", b'{"max_tokens": 5}', {}, "exactly one of", id="no-prompt"),
    pytest.param("iris.req.fake.bad$name", b'{"prompt": "hi"}', {}, "subject", id="bad-workload-token"),
    pytest.param("iris.req.fake.default.me.extra", b'{"prompt": "hi"}', {}, "subject", id="too-many-tokens"),
    pytest.param(
        "iris.req.fake.default", b'{"prompt": "hi"}', {"Iris-Priority": "high"}, "Iris-Priority", id="bad-priority"
    ),
    pytest.param(
        "iris.req.fake.default",
        b'{"prompt": "hi"}',
        {"Iris-Priority": "500"},
        "Iris-Priority",
        id="priority-out-of-range",
    ),
    pytest.param(
        "iris.req.fake.default", b'{"prompt": "hi"}', {"Iris-Deadline": "soon"}, "Iris-Deadline", id="bad-deadline"
    ),
    pytest.param(
        "iris.req.fake.default", b'{"prompt": "hi"}', {"Nats-Msg-Id": "a.b c"}, "Nats-Msg-Id", id="bad-msg-id"
    ),
]


@pytest.mark.parametrize(("subject", "body", "extra_headers", "named"), CASES)
async def test_bad_input_gets_typed_error_and_leaves_stream(
    nats_server: NatsServer, nc: NATS, subject: str, body: bytes, extra_headers: dict[str, str], named: str
) -> None:
    async with broker(nats_server.url), worker(nats_server.url, FakeEngine("fake"), "w1"):
        reply = await raw_request(nc, subject, body, {**good_headers(nc), **extra_headers})
        assert reply["kind"] == "error"
        assert reply["code"] == "invalid_request"
        assert named in str(reply["message"]) and DLQ_STREAM in str(reply["message"])
        await wait_stream_empty(nc)
        (dead,) = await list_dead_letters(nc)
        assert dead.code == "invalid_request" and named in dead.reason and dead.subject == subject
        stored = await nc.jetstream().get_msg(DLQ_STREAM, dead.dlq_seq, direct=True)
        assert stored.data == body  # kept byte for byte, to inspect or replay
        # Nothing wedged: a good request is still served.
        async with Client(nc) as client:
            result = await client.complete("still alive?", model="fake", max_tokens=3)
        assert result.usage.completion_tokens == 3


async def test_request_without_reply_inbox_is_removed_and_logged(nats_server: NatsServer, nc: NATS) -> None:
    async with broker(nats_server.url), worker(nats_server.url, FakeEngine("fake"), "w1"):
        ack = await nc.jetstream().publish("iris.req.fake.default", b'{"prompt": "hi"}')
        await wait_stream_empty(nc)
        (dead,) = await list_dead_letters(nc)
        assert dead.code == "invalid_request" and "Iris-Reply-To" in dead.reason
        async with Client(nc) as client:
            result = await client.complete("next", model="fake", max_tokens=2)
        assert result.usage.completion_tokens == 2
        assert ack.seq >= 1
