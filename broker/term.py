"""One leadership term: the leader's scheduler, its subscriptions and loops, and the one place where what
the scheduler decides becomes I/O (`apply`).

A term starts from `IRIS_LEASES`, the heartbeats heard so far and the stream (headers-only ordered
consumer), exactly as after a restart, then follows leases, heartbeats and cancels, and every `tick_s` lets
time pass. Each event goes to the pure `Scheduler`, whose `Decisions` are applied here: a lease is recorded
in the bucket as it is offered, a rejected or expired request gets its typed `Error` and then leaves the
stream. `end()` cancels every task and subscription of the term at once, so any broker can be deposed or
killed at any point and another carries on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.js.kv import KeyValue

from broker.config import BrokerConfig
from broker.configured_limits import scheduler_limits
from broker.core.decisions import NOTHING, ROUND_DUE, Decisions, QueueNotice, Rejection
from broker.core.intake import waiting_request
from broker.core.scheduler import Scheduler
from broker.core.stats import flow_load
from broker.dead_letters import DeadLetters
from broker.lease_control import send_lease_control
from broker.lease_records import LeaseRecords
from broker.loops import TaskGroup, every, guarded
from broker.metrics import BrokerMetrics
from broker.offers import offer_leases
from broker.request_feed import RequestFeed
from broker.stream_state import read_stream_state
from broker.tickets import TicketService
from broker.warm_feed import WarmHandover
from runtime.answers import send_final
from runtime.cancels import CancelFeed
from runtime.clock import now_ms
from runtime.stream_ops import delete_request, error_reply, get_request, publish_reply
from schemas.cancels import CancelBook
from schemas.errors import IrisError
from schemas.headers import MAX_DEADLINE_S
from schemas.messages import Heartbeat, Lease, LeaseControl, QueueUpdate, encoder, leases_done_decoder
from schemas.subjects import BROKER_STATS_SUBJECT, DONE_FILTER, lease_key

CATCH_UP_S = 5.0  # a new term's first round waits at most this long for the backlog's tail (see `start`)
# Offers sent and not answered yet, at most (`broker.core.round_offers`): far below a burst to a whole fleet of
# thousands of free workers, far above what answers in one round trip while workers answer at once; with
# 8-slot workers it still passes 4,000 leases a second when answers take a whole second (a starved fleet).
MAX_OFFERS_IN_FLIGHT = 512
Beats = Callable[[], Iterable[tuple[Heartbeat, int]]]  # the live workers' last heartbeats, with when heard


class Term:
    def __init__(
        self,
        nc: NATS,
        kv: KeyValue,
        config: BrokerConfig,
        *,
        log: structlog.stdlib.BoundLogger,
        metrics: BrokerMetrics,
        dead_letters: DeadLetters,
        leading: Callable[[], bool],
        listening_since_ms: int,
    ) -> None:
        self.nc, self.kv, self.config, self.log = nc, kv, config, log
        self.metrics, self.dead_letters, self._leading = metrics, dead_letters, leading
        limits = scheduler_limits(config)
        # Start-up grace and the no-worker judgement count from when this broker began to hear heartbeats;
        # requests stored before now were queued by an earlier term.
        started_ms = max(listening_since_ms, now_ms() - limits.worker_timeout_ms)
        self._cancels = CancelBook()  # read from IRIS_CANCELS as the term starts
        self.scheduler = Scheduler(limits, started_ms, adopt_before_ms=now_ms(), cancelled=self._cancels.cancelled)
        self._tickets = TicketService(nc, kv, log)
        self.scheduling = False  # fully up: heartbeats go to the scheduler
        self._round_due = False  # a scheduling round is due at the end of this event-loop turn
        self._hold_below_seq = 0  # no round until the feed has read up to here (the backlog at election)
        self._offers_out = 0  # offers sent, not answered yet
        self._tasks = TaskGroup(log)
        self._subs: list[Any] = []

    async def start(self, beats: Beats, warm: WarmHandover | None = None) -> None:
        """Rebuild from `IRIS_LEASES`, the heartbeats heard and the stream (as after a restart), or from the
        backlog this broker read ahead while it stood by (`warm`) and the stream after it; schedule. Either
        way the first round waits until the backlog there was at election is indexed (at most `CATCH_UP_S`),
        so that it hands out its first leases in fair order, not in the order the stream is read."""
        self._subs.append(await self.nc.subscribe(DONE_FILTER, cb=self._on_leases_done))  # before the read
        for lease in (leases := await LeaseRecords(self.kv).read_all()):
            self.scheduler.restore_lease(lease, now_ms())
        self.log.info("leases restored", count=len(leases))
        replayed = NOTHING  # a new term learns every live worker (slots, running leases) from the beats heard
        for beat, heard_ms in beats():
            replayed += self.scheduler.heartbeat(beat, heard_ms)
        self.scheduling = True
        await self.apply(msgspec.structs.replace(replayed, round_due=False))  # no round before the cancels are read
        await self._tickets.start()  # after the leases: a stored cancel may release a ticket
        cancels = CancelFeed(self.nc, self._cancels, self._on_cancel, self.log)
        self._subs.append(cancels)
        await cancels.start()  # every cancel sent so far is known before the first request is indexed
        feed = RequestFeed(self.nc, self._on_request, self.log)
        self._subs.append(feed)
        if warm is None:  # a replay: the first round waits for the backlog there is now, however it ranks
            state = await read_stream_state(self.nc, self.log)
            if state is not None and state.last_seq >= max(1, state.first_seq):
                self._hold_until(state.last_seq)
            await feed.subscribe()
        else:  # the whole backlog at once: the first round already serves it in fair order
            if warm.last_seq >= warm.next_seq:  # the rest of the backlog first, however it ranks
                self._hold_until(warm.last_seq)
            await self.apply(self.scheduler.rebuild(warm.requests, now_ms()))
            self.log.info(
                "warm backlog indexed", count=len(warm.requests), next_seq=warm.next_seq, last_seq=warm.last_seq
            )
            await self._index_left_unparsed(warm.unparsed)
            feed.delivered_seq = warm.next_seq - 1
            await feed.subscribe(DeliverPolicy.BY_START_SEQUENCE, warm.next_seq)
        self._tasks.spawn(feed.watch())
        self._tasks.spawn(every(self.config.tick_s, self._tick, self.log, "tick"))  # reclaims, expiries, cut-offs
        self._tasks.spawn(every(self.config.stats_s, self._publish_stats, self.log, "stats"))

    async def end(self) -> None:
        """Its tasks, its ticket service, its subscriptions; safe at any point of `start`, and twice."""
        self.scheduling = False
        await self._tasks.cancel()
        await self._tickets.stop()
        subs, self._subs = self._subs, []
        for sub in subs:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # the connection may be closing already
                self.log.info("subscription not removed cleanly", error=str(exc))

    def reload(self, config: BrokerConfig) -> None:
        self.config = config
        self._schedule(self.scheduler.update_limits(scheduler_limits(config)))

    # --- the one place decisions become I/O ------------------------------------------------------

    async def apply(self, decisions: Decisions) -> None:
        """Carry out what the scheduler decided: counts and logs, offers and grants (each its own task),
        then in order each rejection, dead letter and ended ticket, the new requests' places, the next
        round, and the queue notices. One request's I/O failing skips no other."""
        if decisions is ROUND_DUE or decisions is NOTHING:  # most heartbeats
            self._schedule(decisions)
            return
        now = now_ms()
        for queued in decisions.queued:
            self.metrics.queued(queued.request)
        for finished in decisions.finished:
            self.metrics.finished(finished.done, finished.priority, now)
        for requeued in decisions.requeued:
            request = requeued.request
            self.log.warning(
                "lease re-queued",
                seq=request.stream_seq,
                worker=requeued.worker_id,
                attempt=request.attempt,
                why=requeued.why,
            )
            self.metrics.reclaimed(request)
        self._start_leases(decisions.offers, decisions.tickets, now)
        self._control_leases(decisions.suspends, decisions.resumes)
        for rejection in decisions.rejections:
            await guarded(self._reject(rejection), self.log, "rejection reply", rejection.request.stream_seq)
        if decisions.dead_letters:
            await self.dead_letters.failed_on_workers(list(decisions.dead_letters))
        for ended in decisions.tickets_ended:
            await guarded(self._tickets.end(ended.lease, ended.why), self.log, "ticket end", ended.lease.stream_seq)
        for queued in decisions.queued:
            request = queued.request
            if not request.ticket:  # a ticket request's one answer is its ticket
                notice = QueueNotice(
                    request.stream_seq, request.reply_to, request.request_id, queued.position, queued.eta_s
                )
                await self._tell(notice, owner=request.owner or None)
        self._schedule(decisions)
        for notice in decisions.notices:  # a notice does not know its owner: its client's inbox only
            await self._tell(notice, live=False)

    def _start_leases(self, offers: tuple[Lease, ...], tickets: tuple[Lease, ...], now: int) -> None:
        """One `LeaseOffer` per worker for this round's leases; each ticket recorded and sent to its app."""
        by_worker: dict[str, list[Lease]] = {}
        for lease in offers:
            self.metrics.started(lease, now)
            by_worker.setdefault(lease.worker_id, []).append(lease)
        for lease in tickets:
            self.metrics.started(lease, now)
            self._tasks.spawn(self._tickets.grant(lease))
        self._offers_out += len(by_worker)  # counted before any later round runs: the round's task comes first
        for worker_id, leases in by_worker.items():
            self._tasks.spawn(self._offer(worker_id, leases))

    def _control_leases(self, suspends: tuple[Lease, ...], resumes: tuple[Lease, ...]) -> None:
        """One `LeaseControl` per worker: suspend these (preemption), resume those."""
        orders: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
        for lease in suspends:
            orders.setdefault((lease.worker_id, lease.model), ([], []))[0].append(lease.stream_seq)
            self.metrics.suspended(lease)
        for lease in resumes:
            orders.setdefault((lease.worker_id, lease.model), ([], []))[1].append(lease.stream_seq)
        for (worker_id, model), (suspend, resume) in orders.items():
            self._tasks.spawn(self._control(worker_id, model, LeaseControl(suspend=suspend, resume=resume)))

    async def _control(self, worker_id: str, model: str, order: LeaseControl) -> None:
        answer = await send_lease_control(self.nc, worker_id, order, self.config.offer_timeout_s, self.log)
        now = now_ms()
        suspended = answer.suspended if answer is not None else []
        decisions = self.scheduler.suspend_answered(model, order.suspend, suspended, now)
        if order.resume:
            resumed = answer.resumed if answer is not None else []
            refused = [seq for seq in order.resume if seq not in resumed]
            decisions += self.scheduler.resume_answered(model, resumed, refused, now)
            self.metrics.resumed(model, len(resumed))
        if suspended:
            self.log.info("leases suspended", worker=worker_id, leases=suspended)
        await self.apply(decisions)

    async def _tell(self, notice: QueueNotice, *, owner: str | None = None, live: bool = True) -> None:
        update = QueueUpdate(position=notice.position, eta_s=notice.eta_s)
        sent = publish_reply(self.nc, notice.reply_to, notice.request_id, update, owner=owner, live=live)
        await guarded(sent, self.log, "queue update", notice.stream_seq)

    async def _reject(self, rejection: Rejection) -> None:
        """Store and send the typed error, then remove the request (and a stale lease left by an earlier attempt)."""
        request = rejection.request
        self.log.info("request rejected", seq=request.stream_seq, code=rejection.code.value, reason=rejection.message)
        self.metrics.rejected(request, rejection.code.value, rejection.message, now_ms())
        error = error_reply(rejection.code, rejection.message, rejection.retry_after_s)
        await send_final(self.nc, request.reply_to, request.request_id, error, owner=request.owner or None)
        await delete_request(self.nc, request.stream_seq)
        if rejection.delete_record:
            await self.kv.delete(lease_key(request.stream_seq))

    def _schedule(self, decisions: Decisions) -> None:
        """A round once this event-loop turn is over: one for every event that freed or filled a slot."""
        if decisions.round_due and not self._round_due:
            self._round_due = True
            asyncio.get_running_loop().call_soon(self._round)

    def _hold_until(self, seq: int) -> None:
        """No round before the feed has read up to `seq` (or read all there is), at most `CATCH_UP_S`."""
        self._hold_below_seq = seq
        asyncio.get_running_loop().call_later(CATCH_UP_S, self._caught_up)

    def _caught_up(self) -> None:
        """The feed has read the backlog there was at election (or `CATCH_UP_S` passed: the last of it
        may be gone): rounds may start."""
        if self._hold_below_seq:
            self.log.info("backlog tail read", up_to_seq=self._hold_below_seq)
            self._hold_below_seq = 0
            self._schedule(ROUND_DUE)

    def _round(self) -> None:
        self._round_due = False
        if not self.scheduling or not self._leading() or self._hold_below_seq:
            return  # a lapsed term offers nothing, even before the campaign notices it was deposed
        room = MAX_OFFERS_IN_FLIGHT - self._offers_out
        if room <= 0:  # the next answer asks for a round: heartbeats of a fleet with free slots would ask in vain
            return
        decisions = self.scheduler.dispatch(now_ms(), room)
        if decisions.offers or decisions.tickets or decisions.rejections or decisions.suspends or decisions.resumes:
            self._tasks.spawn(self.apply(decisions))

    async def _offer(self, worker_id: str, leases: list[Lease]) -> None:
        """Record and offer a round's leases for one worker (`offer_leases`); what it does not take goes back.
        Answered or not, the offer leaves room for another."""
        try:
            outcome = await offer_leases(self.nc, worker_id, leases, self.config.offer_timeout_s, self.log)
        finally:
            self._offers_out -= 1
            self._schedule(ROUND_DUE)
        if outcome.timed_out:
            return  # it may have accepted: its heartbeats decide
        gone = NOTHING
        if outcome.worker_gone:
            gone = self.scheduler.worker_gone(worker_id, now_ms(), [lease.stream_seq for lease in leases])
        await self.apply(gone + self.scheduler.offers_refused(outcome.not_accepted))

    # --- events in -------------------------------------------------------------------------------

    async def heartbeat(self, beat: Heartbeat, heard_ms: int) -> None:
        await self.apply(self.scheduler.heartbeat(beat, heard_ms))

    async def _on_request(self, msg: Msg) -> None:
        try:
            await self._index_request(msg)
        except Exception:  # one request must never stop the consumer that feeds every other one
            self.log.exception("request indexing failed", subject=msg.subject)
        meta = msg.metadata
        if self._hold_below_seq and (meta.sequence.stream >= self._hold_below_seq or meta.num_pending == 0):
            self._caught_up()  # the last one may have left the stream meanwhile: nothing pending is as good

    async def _index_request(self, msg: Msg) -> None:
        meta = msg.metadata
        seq = meta.sequence.stream
        if not self.scheduler.knows(seq):
            await self._index(seq, msg.subject, msg.headers or {}, int(meta.timestamp.timestamp() * 1000))

    async def _index(self, seq: int, subject: str, headers: dict[str, str], stored_ms: int) -> None:
        now = now_ms()
        max_deadline_s = min(MAX_DEADLINE_S, self.config.duplicate_window_s)
        try:
            prefixes = self.dead_letters.reply_prefixes
            request = waiting_request(subject, headers, seq, stored_ms, now, prefixes, max_deadline_s)
        except IrisError as exc:  # unparseable: a dead letter, its client gets the parse error
            await self.dead_letters.unparseable(seq, subject, headers, exc)
            return
        await self.apply(self.scheduler.enqueue(request, now))

    async def _index_left_unparsed(self, seqs: list[int]) -> None:
        """Messages the standby could not index and the stream still holds: the leader before died or froze
        before it dead-lettered them (they are read again: the standby keeps only their sequences)."""
        for seq in seqs:
            await guarded(self._index_stored(seq), self.log, "dead letter left by the last leader", seq)

    async def _index_stored(self, seq: int) -> None:
        stored = await get_request(self.nc, seq)
        if stored is not None:  # None: dead-lettered meanwhile, or past its TTL
            await self._index(seq, stored.subject, stored.headers, stored.stored_ms)

    async def _on_leases_done(self, msg: Msg) -> None:
        """Leases a worker ended: slots free, and the real tokens of each answer charged to its flow."""
        try:
            ended = leases_done_decoder.decode(msg.data).done
        except Exception as exc:  # a foreign publisher on our subject must not stop the broker
            self.log.warning("bad lease ends ignored", subject=msg.subject, error=str(exc))
            return
        await self.apply(self.scheduler.leases_done(ended, now_ms()))

    async def _on_cancel(self, owner: str | None, request_id: str) -> None:
        """A waiting request leaves at once, a ticket is released; a running one is stopped by the worker
        that runs it (an offered one too: the worker reads the same cancels, and one refused comes back to
        be withdrawn). Only its owner's cancel counts (`schemas.reply_subjects.may_cancel`)."""
        await self.apply(self.scheduler.cancel(request_id, now_ms(), owner))

    async def _tick(self) -> None:
        self._cancels.forget_expired(now_ms())
        await self.apply(self.scheduler.tick(now_ms()))

    async def _publish_stats(self) -> None:
        load = flow_load(self.scheduler.pools, self.metrics.window.flows, self.config.workload_weights)
        weights = self.config.workload_weights
        stats = self.metrics.snapshot(now_ms(), load, lambda w: weights.get(w, 1.0), policy=self.config.policy)
        await self.nc.publish(BROKER_STATS_SUBJECT, encoder.encode(stats))
