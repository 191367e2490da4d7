"""The broker's side of dead letters: the I/O for what the scheduler gave up on, and for unparseable input.

The scheduler decides (a request lost on `max_attempts` workers in a row); this moves it to `IRIS_DLQ`
through `schemas.dead_letters.move_to_dlq`, which stores the dead letter before the client's typed error and
before the request leaves `IRIS_REQUESTS`. The broker reads the stream headers-only, so the body is fetched
by sequence here, only for the rare request that dies. Should the dead letter not be stored, the client still
gets its error and the request stays in the stream until its `Nats-TTL`: nothing is dropped unrecorded.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from broker.core.queue import WaitingRequest
from broker.metrics import BrokerMetrics
from runtime.answers import send_final
from runtime.clock import now_ms
from runtime.dead_letters import move_to_dlq
from runtime.stream_ops import error_reply, get_request, while_unavailable
from schemas import headers as h
from schemas.dead_letters import DeadLetterError
from schemas.errors import ErrorCode, IrisError
from schemas.reply_subjects import DEFAULT_REPLY_PREFIXES, allowed_reply
from schemas.subjects import lease_key, request_owner


class DeadLetters:
    def __init__(
        self,
        log: structlog.stdlib.BoundLogger,
        metrics: BrokerMetrics,
        reply_prefixes: Sequence[str] = DEFAULT_REPLY_PREFIXES,
    ) -> None:
        self.log, self.metrics = log, metrics
        self.reply_prefixes = tuple(reply_prefixes)
        self._nc: NATS | None = None
        self._kv: KeyValue | None = None

    def connect(self, nc: NATS, kv: KeyValue) -> None:
        self._nc, self._kv = nc, kv

    @property
    def nc(self) -> NATS:
        assert self._nc is not None, "dead letters not connected"
        return self._nc

    async def failed_on_workers(self, requests: list[WaitingRequest]) -> None:
        """What the scheduler gave up on (`Decisions.dead_letters`)."""
        for request in requests:
            try:
                await self._failed_on_workers(request)
            except Exception:  # the tick loop that called must go on; the request waits for its TTL
                self.log.exception("dead-lettering failed", seq=request.stream_seq)

    async def _failed_on_workers(self, request: WaitingRequest) -> None:
        """Lost on `request.attempt` workers in a row: dead-letter it, then end its stale lease record."""
        assert self._kv is not None
        kv = self._kv
        reason = f"failed on {request.attempt} workers in a row (each was lost while running it)"
        self.log.error("request dead-lettered", seq=request.stream_seq, attempts=request.attempt, reason=reason)
        self.metrics.rejected(request, ErrorCode.WORKER_FAILED.value, reason, now_ms())
        reply = (request.reply_to, request.request_id)
        await self._move(request.stream_seq, ErrorCode.WORKER_FAILED, reason, request.attempt, reply)
        await while_unavailable(lambda: kv.delete(lease_key(request.stream_seq)))

    async def unparseable(self, seq: int, subject: str, headers: dict[str, str], error: IrisError) -> None:
        """A request the broker cannot index (bad subject or header): dead-letter it with the parse error,
        which its client gets only where replies may go (never to a reply subject that was the error)."""
        self.log.warning("request rejected, dead-lettered", seq=seq, reason=error.message)
        owner = request_owner(subject)
        reply_to = allowed_reply(headers.get(h.REPLY_TO, ""), owner, self.reply_prefixes)
        reply = (reply_to, h.request_id_of(headers.get(h.MSG_ID, str(seq)), owner))
        await self._move(seq, error.code, error.message, 0, reply)

    async def _move(self, seq: int, code: ErrorCode, reason: str, attempts: int, reply: tuple[str, str]) -> None:
        stored = await get_request(self.nc, seq)
        if stored is None:  # gone: answered (a stale lease record) or past its TTL, i.e. its deadline
            self.log.info("request already gone from the stream, nothing to dead-letter", seq=seq)
            return
        try:
            dlq_seq = await move_to_dlq(self.nc, stored, code, reason, attempts, reply, now_ms())
        except DeadLetterError as exc:
            self.log.error("dead letter not stored; the request stays until its TTL", seq=seq, error=exc.message)
            await self._reply(reply, request_owner(stored.subject), code, reason)
            return
        self.log.info("dead letter stored", seq=seq, dlq_seq=dlq_seq, code=code.value)

    async def _reply(self, reply: tuple[str, str], owner: str | None, code: ErrorCode, reason: str) -> None:
        reply_to, request_id = reply
        await send_final(self.nc, reply_to, request_id, error_reply(code, reason), owner=owner)
