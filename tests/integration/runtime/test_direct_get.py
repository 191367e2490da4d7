"""A direct get may be answered by any member that serves the stream's direct gets, up to date or not: on
a cluster, a replica that has not stored the newest request yet answers 404 for it (the compose stack's
chaos run lost a request that way: the worker took it for gone and released it, unanswered). Here the
member without the message is a direct-serving mirror that had it deleted, on one real nats-server."""

from __future__ import annotations

import pytest
from nats.aio.client import Client as NATS
from nats.js.api import StreamConfig, StreamSource

from broker.config import BrokerConfig
from broker.streams import request_stream_config
from runtime.stream_ops import delete_request, get_request
from schemas.subjects import REQUEST_STREAM, request_subject
from tests.integration.services import eventually

LAGGING = "IRIS_REQUESTS_LAGGING"
TRIES = 24  # each direct get goes to one member of two at random: all 24 to the stream itself is 2**-24


@pytest.fixture
async def stored_seq(nc: NATS) -> int:
    """A request in IRIS_REQUESTS that one of the two direct-get members does not hold."""
    js = nc.jetstream()
    await js.add_stream(request_stream_config(BrokerConfig()))
    mirror = StreamConfig(name=LAGGING, mirror=StreamSource(name=REQUEST_STREAM), mirror_direct=True, allow_direct=True)
    await js.add_stream(mirror)
    ack = await js.publish(request_subject("m", "default"), b'{"prompt": "hi"}', stream=REQUEST_STREAM)

    async def mirrored() -> bool:
        return (await js.stream_info(LAGGING)).state.messages == 1

    await eventually(mirrored, what="the mirror holds the request")
    assert await js.delete_msg(LAGGING, ack.seq)
    return ack.seq


async def test_a_request_in_the_stream_is_found_whichever_member_answers(nc: NATS, stored_seq: int) -> None:
    for _ in range(TRIES):
        stored = await get_request(nc, stored_seq)
        assert stored is not None and stored.body == b'{"prompt": "hi"}'


async def test_a_request_gone_from_the_stream_is_gone_whichever_member_answers(nc: NATS, stored_seq: int) -> None:
    assert await delete_request(nc, stored_seq)
    for _ in range(TRIES):
        assert await get_request(nc, stored_seq) is None
