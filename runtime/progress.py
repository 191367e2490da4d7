"""Progress that outlives the worker: each answer's tokens so far, stored before the client sees them.

A running answer writes `Progress` (its token ids and its chunk texts so far) to `IRIS_ANSWERS` under
`iris.progress[.<owner>].<id>`; the stream keeps the last record per subject. A chunk is published to the
client only once a record that covers it is acknowledged, so after a `kill -9` the record holds at least
what the client received: the re-run (`attempt + 1`) re-prefills prompt + those tokens on another worker,
sends the record's chunks again (the client drops the indexes it has) and goes on from there. Writes are
group commits: one record in flight per answer; the tokens produced while it is acknowledged go out in the
next one, so a fast engine writes fewer, larger records and a slow store delays chunks by one round trip
without slowing the engine. A record that cannot be stored does not hold the answer back: its chunks go
out all the same (the answer is then not continuable from there), and the failure is logged. Once the
final is stored the record is purged; one left behind leaves with the stream's window.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from nats.aio.client import Client as NATS

from runtime.stream_ops import Unavailable, while_unavailable
from schemas.answers import storable
from schemas.messages import GenerateRequest, Progress, encoder, progress_decoder
from schemas.subjects import ANSWER_STREAM, JS_ANSWER_PURGE, progress_get_subject, progress_subject

STORE_GIVE_UP_S = 5.0  # a record not stored in this long: its chunks go out uncovered
_log = structlog.get_logger("iris.progress")
Deliver = Callable[[int, str], Awaitable[None]]  # (chunk index, text): publish one chunk to the client


def continuable(request: GenerateRequest) -> bool:
    """Whether a re-run may continue this answer from its tokens: not when it asked for logprobs (a record
    would have to carry them) nor for structured output (the grammar's state is not in the record)."""
    return not request.logprobs and request.response_format is None


class ProgressLog:
    """One answer's progress: `add` each piece as the engine yields it; `close` once it ended (every chunk
    is out when it returns)."""

    def __init__(self, nc: NATS, request_id: str, owner: str | None, base: Progress, deliver: Deliver | None) -> None:
        self.nc, self.deliver = nc, deliver
        self.subject = progress_subject(request_id, owner) if storable(request_id, owner) else ""
        self.attempt, self.model = base.attempt, base.model
        self.tokens, self.pieces = list(base.tokens), list(base.pieces)
        self.delivered = len(self.pieces)  # the earlier attempts' chunks are the caller's to send again
        self.records = 0  # records stored (for the cost per token)
        self._flusher: asyncio.Task[None] | None = None

    def add(self, text: str, tokens: tuple[int, ...]) -> None:
        self.pieces.append(text)
        self.tokens.extend(tokens)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())

    async def close(self) -> None:
        while self._flusher is not None and not self._flusher.done():
            await self._flusher
        if self.delivered < len(self.pieces):  # added after the last flush looked
            await self._flush()

    async def _flush(self) -> None:
        while self.delivered < len(self.pieces):
            upto = len(self.pieces)
            await self._store(upto)
            if self.deliver is not None:
                for index in range(self.delivered, upto):
                    await self.deliver(index, self.pieces[index])
            self.delivered = upto

    async def _store(self, upto: int) -> None:
        if not self.subject:
            return
        record = Progress(self.attempt, self.model, list(self.tokens), self.pieces[:upto])
        data = encoder.encode(record)
        js = self.nc.jetstream()
        try:
            await while_unavailable(
                lambda: js.publish(self.subject, data, stream=ANSWER_STREAM, timeout=2.0), STORE_GIVE_UP_S
            )
            self.records += 1
        except Exception as exc:
            _log.warning("progress not stored; chunks sent uncovered", subject=self.subject, error=str(exc))


async def fetch_progress(nc: NATS, request_id: str, owner: str | None, timeout_s: float = 2.0) -> Progress | None:
    """The last progress record of a request; None when there is none (or it cannot be read)."""
    if not storable(request_id, owner):
        return None

    async def attempt() -> bytes | None:
        reply = await nc.request(progress_get_subject(request_id, owner), b"", timeout=timeout_s)
        status = (reply.headers or {}).get("Status")
        if status in ("404", "408"):
            return None
        if status is not None:
            raise Unavailable(f"direct get answered status {status}")
        return reply.data

    try:
        data = await while_unavailable(attempt, STORE_GIVE_UP_S)
        return None if data is None else progress_decoder.decode(data)
    except Exception as exc:  # the answer starts over: slower, never wrong
        _log.warning("progress not read; the answer starts over", request_id=request_id, error=str(exc))
        return None


async def clear_progress(nc: NATS, request_id: str, owner: str | None) -> None:
    """The final is stored: its progress record goes (not awaited; one left behind ages out)."""
    if storable(request_id, owner):
        body = encoder.encode({"filter": progress_subject(request_id, owner)})
        await nc.publish(JS_ANSWER_PURGE, body)
