"""The broker's decision logic: pure, synchronous, clock passed in, no I/O.

The async shell feeds it events (a request appeared, a worker beat, leases ended, an offer was answered, a
cancel came, time passed); each event method changes the state here and returns one `Decisions` value that
says what the shell must do (offer these leases, send these errors, move these dead letters...). Invariants
it keeps: a request is either waiting in its model's queue or held by exactly one lease, never both; a model
never has more leases than its capacity (`broker.core.limits`) nor a worker more than its slots; a value of
`limit_by` passes its cap only by borrowing idle capacity; a lease on a worker that stopped beating, or that
its worker no longer lists, goes back to the queue with `attempt + 1` (after `max_attempts` lost in a row, it
is a dead letter instead). A request for a ticket (`broker.core.tickets`) is granted a lease held by the app
instead of a worker: it needs capacity but no worker slot.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterable, Sequence

from broker.core.decisions import (
    NOTHING,
    ROUND_DUE,
    Decisions,
    Finished,
    Queued,
    QueueNotice,
    Rejection,
    Requeued,
    cancelled,
    rejected,
)
from broker.core.limits import SchedulerLimits, next_request
from broker.core.pool import ModelPool, waiting_from
from broker.core.preempting import PreemptingIndex
from broker.core.queue import WaitingRequest
from broker.core.round_offers import RoundOffers
from broker.core.start_estimate import eta_s, start_delay_ms, tokens_ahead
from broker.core.strict import StrictQueue
from broker.core.ticketing import TicketingIndex
from broker.core.wfq import WfqQueue
from schemas.errors import ErrorCode
from schemas.messages import Heartbeat, Lease, LeaseDone
from schemas.reply_subjects import may_cancel

__all__ = ["Decisions", "Queued", "Rejection", "Scheduler", "SchedulerLimits"]

Cancelled = Callable[[str, str], bool]  # (request id, reply_to) → a cancel for it was read


def _never_cancelled(request_id: str, reply_to: str) -> bool:
    return False


class Scheduler(PreemptingIndex, TicketingIndex):
    def __init__(
        self,
        limits: SchedulerLimits,
        now_ms: int,
        adopt_before_ms: int = 0,
        cancelled: Cancelled = _never_cancelled,
    ) -> None:
        """`adopt_before_ms`: requests stored before it were queued by an earlier term (the stream is
        replayed when a term starts); they keep their place and are judged only by their deadline.
        `cancelled`: the cancels read so far; a cancelled request never waits, nor is its lease offered."""
        super().__init__(limits)
        self.started_ms = now_ms
        self.adopt_before_ms = adopt_before_ms
        self.cancelled = cancelled

    def update_limits(self, limits: SchedulerLimits) -> Decisions:
        """Live reload: new limits and weights apply from the next round. The policy and a model's
        priority mode stay as started (the waiting index is ordered by them); leases already running keep
        their cut-off."""
        self.limits = dataclasses.replace(limits, policy=self.limits.policy)
        for pool in self.pools.values():
            if isinstance(pool.queue, WfqQueue | StrictQueue):
                pool.queue.weights = dict(limits.workload_weights)
                pool.queue.min_share = limits.for_model(pool.model).min_share
        return ROUND_DUE

    def _eta_s(
        self, pool: ModelPool, position: int, stream_seq: int | None = None, ahead: float | None = None
    ) -> float:
        own = pool.queue.cost_of(stream_seq) if ahead is not None and stream_seq is not None else 0
        return eta_s(pool, self.limits.for_model(pool.model), position, ahead, own)

    # --- a request appears -----------------------------------------------------------------------

    def enqueue(self, request: WaitingRequest, now_ms: int) -> Decisions:
        """A request seen in the stream: queued, rejected, or nothing when already known (redelivery,
        rebuild) or a worker already runs it (adopted)."""
        if self.knows(request.stream_seq):
            return NOTHING
        known_pool = self.pools.get(request.model)
        runner = known_pool.workers.runner_of(request.stream_seq) if known_pool is not None else None
        if known_pool is not None and runner is not None:  # a worker runs it (its lease record was lost): adopt
            self._adopt(known_pool, request, runner, now_ms)
            return NOTHING
        if request.deadline_ms <= now_ms:
            message = "deadline passed before the request was queued"
            return rejected(Rejection(request, ErrorCode.DEADLINE_EXCEEDED, message, delete_record=False))
        judged = request.enqueued_ms >= self.adopt_before_ms  # not queued by an earlier term already
        refused = self._refuse_at_once(request, now_ms) if judged else None
        if refused is not None:
            return rejected(refused)
        decision = self._queue(self._pool(request.model), request, now_ms, judged)
        if decision.queued and self.cancelled(request.request_id, request.reply_to):
            self._forget_waiting(request.stream_seq)  # cancelled before the feed reached it
            return rejected(cancelled(request, "before it was queued", delete_record=False))
        return decision

    def rebuild(self, requests: Iterable[WaitingRequest], now_ms: int) -> Decisions:
        """A backlog an earlier term queued, read ahead by this broker while it stood by
        (`broker.core.warm`): indexed at once, adopted where a worker runs it, past deadlines and cancelled
        ones rejected. Their clients heard their place from that term: no `QueueUpdate` again."""
        rejected: list[Rejection] = []
        for request in requests:
            if self.knows(request.stream_seq):
                continue
            pool = self._pool(request.model)
            runner = pool.workers.runner_of(request.stream_seq)
            if runner is not None:
                self._adopt(pool, request, runner, now_ms)
            elif request.deadline_ms <= now_ms:
                message = "deadline passed while queued"
                rejected.append(Rejection(request, ErrorCode.DEADLINE_EXCEEDED, message, delete_record=False))
            elif self.cancelled(request.request_id, request.reply_to):
                rejected.append(cancelled(request, "while queued", delete_record=False))
            else:
                self._enqueue(pool, request)
        return Decisions(rejections=tuple(rejected), round_due=True)

    def _refuse_at_once(self, request: WaitingRequest, now_ms: int) -> Rejection | None:
        """no_capacity (decided before any state exists for its model: it leaves nothing behind), then
        queue_full."""
        unserved = self._unserved(request, now_ms)
        if unserved is not None:
            return unserved
        pool = self._pool(request.model)
        limits = self.limits.for_model(request.model)
        if limits.max_queue and pool.queue.count(request.workload) >= limits.max_queue:
            waiting = pool.queue.count(request.workload)
            message = f"workload {request.workload!r} already has {waiting} requests waiting (max_queue)"
            retry_s = max(1.0, self._eta_s(pool, 0))
            return Rejection(request, ErrorCode.QUEUE_FULL, message, retry_s, delete_record=False)
        return None

    def _queue(self, pool: ModelPool, request: WaitingRequest, now_ms: int, judged: bool) -> Decisions:
        """Into the queue, unless its estimated start is past its deadline (deadline_unmeetable)."""
        limits = self.limits.for_model(request.model)
        self._enqueue(pool, request)
        position = pool.queue.position(request.stream_seq)
        ahead = tokens_ahead(pool, request.stream_seq)
        start_ms = now_ms + start_delay_ms(pool, limits, position, ahead)
        if judged and pool.completed and start_ms > request.deadline_ms:
            self._forget_waiting(request.stream_seq)
            wait_s = (start_ms - now_ms) / 1000
            message = f"estimated start in {wait_s:.1f} s (queue position {position}) is past the deadline"
            unmeetable = ErrorCode.DEADLINE_UNMEETABLE
            return rejected(Rejection(request, unmeetable, message, round(wait_s, 3), delete_record=False))
        if not request.ticket:  # a ticket request waits on one request/reply: its only answer is the ticket
            pool.updates.plan(
                request.stream_seq, position, request.reply_to, request.request_id, pool.dispatched, now_ms
            )
        queued = Queued(request, position, self._eta_s(pool, position, request.stream_seq, ahead))
        return Decisions(queued=(queued,), round_due=True)

    def _warmed_up(self, now_ms: int) -> bool:
        """Past the start-up grace in which the workers' heartbeats are learnt: a model without one has none."""
        return now_ms - self.started_ms >= self.limits.worker_timeout_ms

    def _unserved(self, request: WaitingRequest, now_ms: int) -> Rejection | None:
        """no_capacity: no worker serves the model (a ticket needs its `max_concurrency` instead)."""
        pool = self.pools.get(request.model)
        if not self._warmed_up(now_ms) or (pool is not None and pool.workers):
            return None
        retry_s = self.limits.worker_timeout_ms / 1000.0
        if not request.ticket:
            message = f"no worker serves model {request.model!r}"
            return Rejection(request, ErrorCode.NO_CAPACITY, message, retry_s, delete_record=False)
        if not self.limits.for_model(request.model).max_concurrency:
            message = f"model {request.model!r} has no max_concurrency for admission and no worker"
            return Rejection(request, ErrorCode.NO_CAPACITY, message, retry_s, delete_record=False)
        return None

    def _drop_unserved(self, now_ms: int) -> tuple[Rejection, ...]:
        """Once warmed up: requests that came during the start-up grace for a model no worker has ever
        served get no_capacity, and pools with nothing left in them (no worker, lease or waiting request)
        are dropped. So requests to arbitrary model names leave no state behind, while a model whose
        workers died keeps its waiting requests for a worker to come back (until their deadlines)."""
        if not self._warmed_up(now_ms):
            return ()
        rejected: list[Rejection] = []
        retry_s = self.limits.worker_timeout_ms / 1000.0
        for model, pool in list(self.pools.items()):
            if pool.workers or pool.leases or self.limits.for_model(model).max_concurrency:
                continue  # served, running, or a ticket model from the config
            while not pool.ever_served and (request := pool.queue.pop()) is not None:
                del self._model_of[request.stream_seq]
                self._by_request_id.pop(request.request_id, None)
                message = f"no worker serves model {model!r}"
                rejected.append(Rejection(request, ErrorCode.NO_CAPACITY, message, retry_s, delete_record=False))
            if not len(pool.queue):
                del self.pools[model]
        return tuple(rejected)

    def _expired(self, now_ms: int) -> tuple[Rejection, ...]:
        return tuple(
            Rejection(request, ErrorCode.DEADLINE_EXCEEDED, "deadline passed while queued")
            for request in self._expire(now_ms)
        )

    def _queue_notices(self, now_ms: int) -> tuple[QueueNotice, ...]:
        notices = []
        for pool in self.pools.values():
            for seq, position, reply_to, request_id in pool.updates.take_due(pool.queue, pool.dispatched, now_ms):
                # The work ahead priced at its own cost per request: walking its flow for every notice costs
                # O(depth) each, and a deep backlog is due thousands of notices a second.
                ahead = position * pool.queue.cost_of(seq) if pool.service_time.known else None
                eta = self._eta_s(pool, position, seq, ahead)
                notices.append(QueueNotice(seq, reply_to, request_id, position, eta))
                pool.updates.plan(seq, position, reply_to, request_id, pool.dispatched, now_ms)
        return tuple(notices)

    # --- a scheduling round ----------------------------------------------------------------------

    def dispatch(self, now_ms: int, offer_room: int | None = None) -> Decisions:
        """Hand waiting requests to free slots, best first: leases to offer (to at most `offer_room` workers,
        `round_offers`), tickets to grant; one cancelled meanwhile is withdrawn at once (its slot is free
        next round), one past its deadline since the last tick rejected (its stream TTL may have removed it)."""
        if now_ms - self.started_ms < self.limits.startup_grace_ms:
            return NOTHING
        expired = self._expired(now_ms)
        leases: list[Lease] = []
        resumes: list[Lease] = []
        suspends: list[Lease] = []
        round_offers = RoundOffers(offer_room)
        for pool in self.pools.values():
            resumes += self._resumes_due(pool)
            leases += self._dispatch_pool(pool, now_ms, round_offers)
            suspends += self._suspends_due(pool, now_ms)
        control = Decisions(suspends=tuple(suspends), resumes=tuple(resumes)) if suspends or resumes else NOTHING
        if expired:
            control += Decisions(rejections=expired)
        if not leases:
            return control
        offers: list[Lease] = []
        tickets: list[Lease] = []
        rejections: list[Rejection] = []
        for lease in leases:
            if self.cancelled(lease.request_id, lease.reply_to) and self._withdraw(lease.stream_seq) is not None:
                rejections.append(cancelled(waiting_from(lease, lease.attempt), "before it started"))
            else:
                (tickets if lease.ticket else offers).append(lease)
        return Decisions(offers=tuple(offers), tickets=tuple(tickets), rejections=tuple(rejections)) + control

    def _dispatch_pool(self, pool: ModelPool, now_ms: int, round_offers: RoundOffers) -> list[Lease]:
        limits = self.limits.for_model(pool.model)
        leases: list[Lease] = []
        round_offers.start_pool(pool.workers, len(pool.queue))
        while len(pool.queue) and pool.capacity(limits.max_concurrency) > 0:
            worker = round_offers.worker(pool.workers)
            worker_free = worker is not None
            # Nothing starts in a worker slot that the best waiting request would suspend (tickets never are).
            floor = self._start_floor(pool) if worker_free else 0.0
            request = next_request(pool.queue, pool.leases.values(), limits, worker_free, floor) if floor else None
            if request is None:  # or those above the floor cannot start now (a limit): the queue's order
                request = next_request(pool.queue, pool.leases.values(), limits, worker_free)
            if request is None:
                break
            self._slot_handed_out(pool)
            self._by_request_id.pop(request.request_id, None)
            pool.dispatched += 1
            if request.ticket:
                lease = self._lease_for(request, "", now_ms)
                self.tickets.hold(lease)
            else:
                assert worker is not None
                lease = self._lease_for(request, worker.worker_id, now_ms)
                pool.workers.lease(worker, request.stream_seq)
            pool.leases[request.stream_seq] = lease
            leases.append(lease)
        return leases

    # --- cancels --------------------------------------------------------------------------------

    def cancel(self, request_id: str, now_ms: int, owner: str | None = None) -> Decisions:
        """A cancel by `owner` (`may_cancel`): a waiting request leaves at once, a ticket is released; a
        running request is stopped by its worker, not here."""
        seq = self._by_request_id.get(request_id)
        model = self._model_of.get(seq) if seq is not None else None
        request = self.pools[model].queue.get(seq) if seq is not None and model is not None else None
        if request is not None and may_cancel(owner, request.reply_to):
            self._forget_waiting(request.stream_seq)
            return rejected(cancelled(request, "while queued"))
        return self.release_ticket(request_id, now_ms, owner)

    # --- workers and leases ----------------------------------------------------------------------

    def offers_refused(self, stream_seqs: Iterable[int]) -> Decisions:
        """The worker said no (full or draining): back to the queue, same attempt, no offers until it beats."""
        for seq in stream_seqs:
            self._offer_refused(seq)
        return ROUND_DUE

    def _offer_refused(self, stream_seq: int) -> None:
        lease = self._drop_lease(stream_seq)
        if lease is None:
            return
        pool = self._pool(lease.model)
        worker = pool.workers.get(lease.worker_id)
        if worker is not None:
            pool.workers.refuse(worker)
        self._enqueue(pool, waiting_from(lease, lease.attempt))

    def worker_gone(self, worker_id: str, now_ms: int, offered: Collection[int] = ()) -> Decisions:
        """No one answers on the worker's subject: forget it and re-queue its leases. The leases whose offer
        found it gone (`offered`) never ran there, so they keep their attempt (no step towards a dead letter)."""
        for pool in self.pools.values():
            worker = pool.workers.get(worker_id)
            if worker is not None:
                for seq in offered:
                    if seq in worker.leases:
                        self._offer_refused(seq)
                pool.workers.remove(worker_id)
                return self._requeue_lost(pool, worker_id, sorted(worker.leases), "worker gone") + ROUND_DUE
        return ROUND_DUE

    def lease_ended(self, stream_seq: int, now_ms: int) -> Decisions:
        """One lease ended with no usage to learn from: its slot is free."""
        self._lease_ended(stream_seq, now_ms)
        return ROUND_DUE

    def leases_done(self, ended: Sequence[LeaseDone], now_ms: int) -> Decisions:
        """Leases a worker ended (`LeasesDone`): each request got its final reply and left the stream; the
        real tokens of each answer are charged to its flow."""
        finished = []
        for done in ended:
            if done.completed:
                pool = self.pools.get(done.model)
                lease = pool.leases.get(done.stream_seq) if pool is not None else None
                finished.append(Finished(done, lease.priority if lease else 1))
                self._lease_usage(done, now_ms)
            self._lease_ended(done.stream_seq, now_ms)
        return Decisions(finished=tuple(finished), round_due=True)

    def heartbeat(self, beat: Heartbeat, now_ms: int) -> Decisions:
        """A worker is alive; leases it should be running but does not list go back to the queue. Most
        beats change nothing (a fleet of 1,000 beats 1,000 times a second): those build no decisions."""
        pool = self._pool(beat.model)
        worker = pool.workers.get(beat.worker_id)
        if worker is None:
            worker = pool.workers.add(beat.worker_id, beat.model, beat.slots, now_ms)
        running = frozenset(beat.running)
        pool.workers.beat(worker, beat.slots, beat.draining, running, now_ms)
        pool.ever_served = True
        for seq in running - worker.leases:
            request = pool.queue.remove(seq)
            if request is not None:
                self._adopt(pool, request, worker, now_ms)
        self._reconcile_suspended(pool, worker, beat, now_ms)
        lost = [
            seq
            for seq in worker.leases
            if seq not in running and now_ms - pool.leases[seq].leased_ms > self.limits.lease_confirm_ms
        ]
        if lost:
            return self._requeue_lost(pool, beat.worker_id, lost, "not listed by its worker's heartbeat") + ROUND_DUE
        return ROUND_DUE

    def _requeue_lost(self, pool: ModelPool, worker_id: str, seqs: list[int], why: str) -> Decisions:
        """Lost leases go back to the queue with `attempt + 1`, unless that was the `max_attempts`-th worker
        lost in a row (a poison prompt crashes each one): then it is a dead letter, no longer known."""
        requeued, dead = [], []
        for seq in seqs:
            lease = self._drop_lease(seq)
            if lease is None:
                continue
            if lease.attempt >= self.limits.max_attempts:
                self._model_of.pop(seq, None)
                dead.append(waiting_from(lease, lease.attempt))
                continue
            request = waiting_from(lease, lease.attempt + 1)
            self._enqueue(pool, request)
            requeued.append(Requeued(request, worker_id, why))
        return Decisions(requeued=tuple(requeued), dead_letters=tuple(dead))

    # --- time passes -----------------------------------------------------------------------------

    def tick(self, now_ms: int) -> Decisions:
        """Leases of workers that stopped beating are re-queued (or dead letters), waiting requests past
        their deadline rejected, unserved models dropped, tickets past their cut-off ended, and waiting
        clients due a `QueueUpdate` told."""
        decisions = NOTHING
        for pool in self.pools.values():
            for worker in pool.workers.remove_silent(now_ms - self.limits.worker_timeout_ms):
                decisions += self._requeue_lost(pool, worker.worker_id, sorted(worker.leases), "worker timed out")
        rejections = self._expired(now_ms) + self._drop_unserved(now_ms)
        ended = self._expire_tickets(now_ms)
        tail = Decisions(rejections=rejections, tickets_ended=ended, notices=self._queue_notices(now_ms))
        return decisions + tail + ROUND_DUE
