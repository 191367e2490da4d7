"""What a new term reads of the request stream before its first round (`broker.stream_state`): first and
last sequence, the deleted ones when asked; None, after its attempts, when the stream cannot be read."""

from __future__ import annotations

import structlog
from nats.aio.client import Client as NATS

from broker.config import BrokerConfig
from broker.stream_state import read_stream_state
from broker.streams import ensure_streams
from schemas.subjects import JS_MSG_DELETE, request_subject

LOG = structlog.get_logger()


async def test_the_state_names_the_last_sequence_and_the_deleted_ones(nc: NATS) -> None:
    js = nc.jetstream()
    await ensure_streams(js, BrokerConfig())
    for i in range(5):
        await js.publish(request_subject("m", "default"), b"{}", headers={"Nats-Msg-Id": f"r{i}"})
    await nc.request(JS_MSG_DELETE, b'{"seq":3,"no_erase":true}', timeout=5)
    with_deleted = await read_stream_state(nc, LOG, deleted=True)
    plain = await read_stream_state(nc, LOG)
    assert with_deleted is not None and plain is not None
    assert (with_deleted.first_seq, with_deleted.last_seq, with_deleted.deleted) == (1, 5, [3])
    assert (plain.first_seq, plain.last_seq, plain.deleted) == (1, 5, None)


async def test_a_stream_that_cannot_be_read_gives_none_after_every_attempt(nc: NATS) -> None:
    # No stream: each attempt gets an error answer, not a state.
    assert await read_stream_state(nc, LOG, attempts=2, timeout_s=1.0) is None
