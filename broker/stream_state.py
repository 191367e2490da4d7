"""The request stream's state as JetStream reports it (first and last sequence, the deleted ones), for a new
term to know how much backlog it must read before its first round.

Asked on the stream-info API directly: nats-py cannot ask for `deleted_details`. A busy broker (a standby
that just stopped reading 100,000 requests, a loaded machine) may take seconds to read the answer off its
connection, so each attempt has its own timeout and a failed one is tried again.
"""

from __future__ import annotations

import msgspec
import structlog
from nats.aio.client import Client as NATS

from schemas.subjects import JS_STREAM_INFO

ATTEMPTS = 3
TIMEOUT_S = 5.0


class StreamState(msgspec.Struct):
    first_seq: int = 0
    last_seq: int = 0
    deleted: list[int] | None = None  # only when asked for


class _StreamInfo(msgspec.Struct):
    state: StreamState | None = None


_info_decoder = msgspec.json.Decoder(_StreamInfo)


async def read_stream_state(
    nc: NATS,
    log: structlog.stdlib.BoundLogger,
    *,
    deleted: bool = False,
    attempts: int = ATTEMPTS,
    timeout_s: float = TIMEOUT_S,
) -> StreamState | None:
    """The stream's state, with its deleted sequences if asked; None once every attempt failed."""
    query = b'{"deleted_details":true}' if deleted else b"{}"
    for attempt in range(1, attempts + 1):
        try:
            reply = await nc.request(JS_STREAM_INFO, query, timeout=timeout_s)
            state = _info_decoder.decode(reply.data).state
        except Exception as exc:
            log.warning("request stream state not read", attempt=attempt, error=repr(exc))
            continue
        if state is not None:
            return state
        log.warning("request stream state not in the answer", attempt=attempt, answer=reply.data[:200])
    return None
