"""A standby's read-ahead of the backlog (`broker.core.warm.WarmBacklog`), fed while another broker leads.

It reads the stream with the same headers-only ordered consumer as a term (`RequestFeed`), hears the lease
ends the leader hears, and drops expired requests every second. Elected, the broker stops it and hands what
it holds to the new term (`hand_over`): whatever the stream still holds, checked against the stream's
first sequence and its deleted ones, and the sequence the term's own feed starts from. So the new leader
indexes 100,000 waiting requests in about a second and serves them in fair order from its first lease. If
the check fails (the stream state unreadable, after retries), the term replays the whole stream instead, as
after a restart, and holds its first round until it has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from broker.core.intake import waiting_request
from broker.core.queue import WaitingRequest
from broker.core.warm import WarmBacklog
from broker.loops import TaskGroup, every
from broker.request_feed import RequestFeed
from broker.stream_state import read_stream_state
from runtime.clock import now_ms
from schemas.errors import IrisError
from schemas.messages import leases_done_decoder
from schemas.subjects import DONE_FILTER

EXPIRE_EVERY_S = 1.0


@dataclass(frozen=True)
class WarmHandover:
    requests: list[WaitingRequest]  # still in the stream, in stream order
    unparsed: list[int]  # sequences of messages still in the stream that could not be indexed
    next_seq: int  # the first stream sequence the term's own feed reads
    last_seq: int  # the stream's last sequence at the hand-over: the term's first round waits for it


class WarmFeed:
    def __init__(
        self, nc: NATS, log: structlog.stdlib.BoundLogger, reply_prefixes: Sequence[str], max_deadline_s: float
    ) -> None:
        self.nc, self.log = nc, log
        self.reply_prefixes, self.max_deadline_s = reply_prefixes, max_deadline_s
        self.backlog = WarmBacklog()
        self._feed = RequestFeed(nc, self._on_request, log)
        self._tasks = TaskGroup(log)
        self._done_sub: Any = None
        self._running = False

    async def start(self) -> WarmFeed:
        """Raises if the stream cannot be read (JetStream unavailable), leaving nothing behind."""
        self._done_sub = await self.nc.subscribe(DONE_FILTER, cb=self._on_leases_done)  # before the read
        self._running = True
        try:
            await self._feed.subscribe()
        except BaseException:
            await self.stop()
            raise
        self._tasks.spawn(self._feed.watch())
        self._tasks.spawn(every(EXPIRE_EVERY_S, self._expire, self.log, "warm backlog expiry"))
        return self

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        await self._tasks.cancel()
        if self._feed.subscribed:
            await self._feed.unsubscribe()
        try:
            await self._done_sub.unsubscribe()
        except Exception as exc:  # the connection may be closing already
            self.log.info("lease-end subscription not removed cleanly", error=str(exc))

    async def hand_over(self) -> WarmHandover | None:
        """Stop reading and give what is still in the stream; None if the stream cannot be checked."""
        await self.stop()
        state = await read_stream_state(self.nc, self.log, deleted=True)
        if state is None:
            self.log.warning("warm backlog not checked against the stream: replaying it", held=len(self.backlog))
            return None
        requests, unparsed = self.backlog.hand_over(state.first_seq, frozenset(state.deleted or ()))
        return WarmHandover(requests, unparsed, self.backlog.last_seq + 1, state.last_seq)

    async def _on_request(self, msg: Msg) -> None:
        meta = msg.metadata
        seq = meta.sequence.stream
        self.backlog.read_up_to(seq)
        try:
            stored_ms = int(meta.timestamp.timestamp() * 1000)
            request = waiting_request(
                msg.subject, msg.headers or {}, seq, stored_ms, now_ms(), self.reply_prefixes, self.max_deadline_s
            )
        except IrisError:
            self.backlog.unparsed(seq)  # the leader dead-letters it, unless it dies first
            return
        except Exception:  # one request must never stop the read-ahead of every other one
            self.log.exception("warm indexing failed", subject=msg.subject)
            return
        self.backlog.add(request)

    async def _on_leases_done(self, msg: Msg) -> None:
        try:
            ended = leases_done_decoder.decode(msg.data).done
        except Exception:  # the leader logs foreign publishers
            return
        for done in ended:
            self.backlog.forget(done.stream_seq)

    async def _expire(self) -> None:
        self.backlog.expire(now_ms())
