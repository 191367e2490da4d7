"""What the operator listings of a stream share (`iris dlq ls`, `iris answers list`): counting its
messages, reading the newest of them one row each through an ordered consumer, and printing the rows as
JSON or as a table whose last column (the long one) is not padded."""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

READ_TIMEOUT_S = 5.0
T = TypeVar("T")


async def message_count(nc: NATS, stream: str) -> int:
    """Messages in `stream`; 0 when it does not exist (yet)."""
    try:
        info = await nc.jetstream().stream_info(stream)
    except NotFoundError:
        return 0
    return int(info.state.messages)


async def read_newest(
    nc: NATS, stream: str, subjects: str, row: Callable[[Msg], T], limit: int = 0, *, headers_only: bool = False
) -> list[T]:
    """`row` of each message on `subjects`, oldest first; with `limit`, only the newest `limit`. With
    `headers_only`, no body crosses the wire."""
    if not await message_count(nc, stream):
        return []
    config = ConsumerConfig(headers_only=headers_only or None, deliver_policy=DeliverPolicy.ALL)
    sub = await nc.jetstream().subscribe(subjects, ordered_consumer=True, config=config)
    found: collections.deque[T] = collections.deque(maxlen=limit or None)
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=READ_TIMEOUT_S)
            except NatsTimeout:
                break  # the last ones were removed while we read
            found.append(row(msg))
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return list(found)


def as_json(rows: Sequence[object]) -> str:
    return msgspec.json.encode(rows).decode()


def table(rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, the last one left as it is."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]) for row in rows)
