"""The broker's decision logic: pure, synchronous, clock passed in, no I/O.

The async service feeds it events (a request appeared, a worker beat, a lease ended, time passed) and
carries out what it returns (offer these leases, send these errors, re-queue these). Invariants it keeps:
a request is either waiting in its model's queue or held by exactly one lease, never both; a model never
has more leases than its capacity (`broker.limits`) nor a worker more than its slots; a value of
`limit_by` passes its cap only by borrowing idle capacity; a lease on a worker that stopped beating, or
that its worker no longer lists, goes back to the queue with `attempt + 1` (after `max_attempts` lost in a
row, it is a dead letter instead). An admission request (`ticket`) is granted a lease held by the app
instead of a worker: it needs capacity but no worker slot, and ends when the app releases it or at its
cut-off (`max_inflight`).
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Collection
from dataclasses import dataclass
from functools import partial

from broker.limits import ModelLimits, SchedulerLimits, next_request
from broker.pool import SHARED_FIELDS, ModelPool, WorkerState, estimate, waiting_from
from broker.queue import FifoQueue, WaitingRequest, make_queue
from broker.start_estimate import eta_s, start_delay_ms, tokens_ahead
from broker.strict import StrictQueue
from broker.wfq import WfqQueue
from schemas.errors import ErrorCode
from schemas.headers import MAX_DEADLINE_S
from schemas.messages import Heartbeat, Lease, LeaseDone
from schemas.reply_subjects import may_cancel

__all__ = ["Admitted", "Rejection", "Scheduler", "SchedulerLimits"]

TICKET_MAX_HOLD_MS = int(MAX_DEADLINE_S * 1000)  # a ticket's cut-off when max_inflight is 0: never forever


@dataclass(frozen=True)
class Rejection:
    request: WaitingRequest
    code: ErrorCode
    message: str
    retry_after_s: float | None = None


@dataclass(frozen=True)
class Admitted:
    request: WaitingRequest
    position: int
    eta_s: float


class Scheduler:
    def __init__(self, limits: SchedulerLimits, now_ms: int, adopt_before_ms: int = 0) -> None:
        """`adopt_before_ms`: requests stored before it were admitted by an earlier term (the stream is
        replayed when a term starts); they keep their place and are judged only by their deadline."""
        self.limits = limits
        self.started_ms = now_ms
        self.adopt_before_ms = adopt_before_ms
        self.pools: dict[str, ModelPool] = {}
        self._model_of: dict[int, str] = {}  # every known stream sequence → its model
        self._deadlines: list[tuple[int, int]] = []  # (deadline_ms, seq) of waiting requests, lazy
        self._by_request_id: dict[str, int] = {}  # request id → stream sequence, while waiting
        self._tickets: dict[str, int] = {}  # request id → stream sequence of granted tickets
        self._ticket_cutoffs: list[tuple[int, int]] = []  # (cutoff_ms, seq) of granted tickets, lazy
        self._dead_letters: list[WaitingRequest] = []  # lost on max_attempts workers; the service moves them

    def _pool(self, model: str) -> ModelPool:
        pool = self.pools.get(model)
        if pool is None:
            pool = self.pools[model] = ModelPool(model=model, queue=FifoQueue())
            limits = self.limits.for_model(model)
            cost = partial(estimate, pool)
            pool.queue = make_queue(
                self.limits.policy, self.limits.workload_weights, cost, limits.min_share, limits.priority_mode
            )
        return pool

    def update_limits(self, limits: SchedulerLimits) -> None:
        """Live reload: new limits and weights apply to the next decision. The policy and a model's
        priority mode stay as started (the waiting index is ordered by them); leases already running keep
        their cut-off."""
        self.limits = dataclasses.replace(limits, policy=self.limits.policy)
        for pool in self.pools.values():
            if isinstance(pool.queue, WfqQueue | StrictQueue):
                pool.queue.weights = dict(limits.workload_weights)
                pool.queue.min_share = limits.for_model(pool.model).min_share

    def knows(self, stream_seq: int) -> bool:
        return stream_seq in self._model_of

    def _eta_s(
        self, pool: ModelPool, position: int, stream_seq: int | None = None, ahead: float | None = None
    ) -> float:
        own = pool.queue.cost_of(stream_seq) if ahead is not None and stream_seq is not None else 0
        return eta_s(pool, self.limits.for_model(pool.model), position, ahead, own)

    def admit(self, request: WaitingRequest, now_ms: int) -> Admitted | Rejection | None:
        """A request seen in the stream; None when it is already known (redelivery, rebuild)."""
        if self.knows(request.stream_seq):
            return None
        known_pool = self.pools.get(request.model)
        workers = known_pool.workers.values() if known_pool is not None else ()
        runner = next((w for w in workers if request.stream_seq in w.reported), None)
        if known_pool is not None and runner is not None:  # a worker runs it (its lease record was lost): adopt
            self._adopt(known_pool, request, runner, now_ms)
            return None
        if request.deadline_ms <= now_ms:
            return Rejection(request, ErrorCode.DEADLINE_EXCEEDED, "deadline passed before the request was queued")
        judged = request.enqueued_ms >= self.adopt_before_ms  # not admitted by an earlier term already
        unserved = self._unserved(request, now_ms) if judged else None
        if unserved is not None:  # decided before any state exists for its model: it leaves nothing behind
            return unserved
        pool = self._pool(request.model)
        limits = self.limits.for_model(request.model)
        refused = self._refuse_at_once(pool, limits, request) if judged else None
        if refused is not None:
            return refused
        self._enqueue(pool, request)
        position = pool.queue.position(request.stream_seq)
        ahead = tokens_ahead(pool, request.stream_seq)
        start_ms = now_ms + start_delay_ms(pool, limits, position, ahead)
        if judged and pool.completed and start_ms > request.deadline_ms:
            self._forget_waiting(request.stream_seq)
            wait_s = (start_ms - now_ms) / 1000
            message = f"estimated start in {wait_s:.1f} s (queue position {position}) is past the deadline"
            return Rejection(request, ErrorCode.DEADLINE_UNMEETABLE, message, round(wait_s, 3))
        if not request.ticket:  # an admission waits on one request/reply: its only answer is the ticket
            pool.updates.plan(
                request.stream_seq, position, request.reply_to, request.request_id, pool.dispatched, now_ms
            )
        return Admitted(request, position, self._eta_s(pool, position, request.stream_seq, ahead))

    def _warmed_up(self, now_ms: int) -> bool:
        """Past the start-up grace in which the workers' heartbeats are learnt: a model without one has none."""
        return now_ms - self.started_ms >= self.limits.worker_timeout_ms

    def _unserved(self, request: WaitingRequest, now_ms: int) -> Rejection | None:
        """no_capacity: no worker serves the model (an admission needs its `max_concurrency` instead)."""
        pool = self.pools.get(request.model)
        if not self._warmed_up(now_ms) or (pool is not None and pool.workers):
            return None
        retry_s = self.limits.worker_timeout_ms / 1000.0
        if not request.ticket:
            return Rejection(request, ErrorCode.NO_CAPACITY, f"no worker serves model {request.model!r}", retry_s)
        if not self.limits.for_model(request.model).max_concurrency:
            message = f"model {request.model!r} has no max_concurrency for admission and no worker"
            return Rejection(request, ErrorCode.NO_CAPACITY, message, retry_s)
        return None

    def drop_unserved(self, now_ms: int) -> list[Rejection]:
        """Once warmed up: requests that came during the start-up grace for a model no worker has ever
        served get no_capacity, and pools with nothing left in them (no worker, lease or waiting request)
        are dropped. So requests to arbitrary model names leave no state behind, while a model whose
        workers died keeps its waiting requests for a worker to come back (until their deadlines)."""
        if not self._warmed_up(now_ms):
            return []
        rejected: list[Rejection] = []
        retry_s = self.limits.worker_timeout_ms / 1000.0
        for model, pool in list(self.pools.items()):
            if pool.workers or pool.leases or self.limits.for_model(model).max_concurrency:
                continue  # served, running, or an admission model from the config
            while not pool.ever_served and (request := pool.queue.pop()) is not None:
                del self._model_of[request.stream_seq]
                self._by_request_id.pop(request.request_id, None)
                rejected.append(Rejection(request, ErrorCode.NO_CAPACITY, f"no worker serves model {model!r}", retry_s))
            if not len(pool.queue):
                del self.pools[model]
        return rejected

    def _refuse_at_once(self, pool: ModelPool, limits: ModelLimits, request: WaitingRequest) -> Rejection | None:
        """queue_full: its workload's queue is at max_queue."""
        if limits.max_queue and pool.queue.count(request.workload) >= limits.max_queue:
            waiting = pool.queue.count(request.workload)
            message = f"workload {request.workload!r} already has {waiting} requests waiting (max_queue)"
            return Rejection(request, ErrorCode.QUEUE_FULL, message, max(1.0, self._eta_s(pool, 0)))
        return None

    def queue_updates(self, now_ms: int) -> list[tuple[str, str, int, float]]:
        """(reply_to, request id, position, eta_s) for waiting requests due a `QueueUpdate`."""
        out = []
        for pool in self.pools.values():
            for seq, position, reply_to, request_id in pool.updates.take_due(pool.queue, pool.dispatched, now_ms):
                out.append((reply_to, request_id, position, self._eta_s(pool, position, seq, tokens_ahead(pool, seq))))
                pool.updates.plan(seq, position, reply_to, request_id, pool.dispatched, now_ms)
        return out

    def _forget_waiting(self, stream_seq: int) -> WaitingRequest | None:
        """Take a waiting request out of the index (expired, cancelled, finished elsewhere, rejected)."""
        model = self._model_of.get(stream_seq)
        if model is None:
            return None
        request = self._pool(model).queue.remove(stream_seq)
        if request is not None:
            del self._model_of[stream_seq]
            self._by_request_id.pop(request.request_id, None)
        return request

    def _enqueue(self, pool: ModelPool, request: WaitingRequest) -> None:
        pool.queue.push(request)
        self._by_request_id[request.request_id] = request.stream_seq
        self._model_of[request.stream_seq] = request.model
        heapq.heappush(self._deadlines, (request.deadline_ms, request.stream_seq))

    def _adopt(self, pool: ModelPool, request: WaitingRequest, worker: WorkerState, now_ms: int) -> None:
        self._by_request_id.pop(request.request_id, None)
        pool.leases[request.stream_seq] = self._lease_for(request, worker.worker_id, now_ms)
        worker.leases.add(request.stream_seq)
        self._model_of[request.stream_seq] = request.model

    def _lease_for(self, request: WaitingRequest, worker_id: str, now_ms: int) -> Lease:
        inflight_ms = self.limits.for_model(request.model).max_inflight_ms
        if request.ticket and not inflight_ms:
            inflight_ms = TICKET_MAX_HOLD_MS  # an app that vanishes must not hold a slot forever
        cutoff_ms = now_ms + inflight_ms if inflight_ms else 0
        fields = {name: getattr(request, name) for name in SHARED_FIELDS}
        fields["cost_tokens"] = request.cost_tokens or estimate(self.pools[request.model], request)
        return Lease(**fields, worker_id=worker_id, leased_ms=now_ms, cutoff_ms=cutoff_ms)

    def dispatch(self, now_ms: int) -> list[Lease]:
        """Hand waiting requests to free slots, best first; the caller records and offers each lease
        (a ticket lease goes to the app that asked for it)."""
        offers: list[Lease] = []
        if now_ms - self.started_ms < self.limits.startup_grace_ms:
            return offers
        for pool in self.pools.values():
            offers += self._dispatch_pool(pool, now_ms)
        return offers

    def _dispatch_pool(self, pool: ModelPool, now_ms: int) -> list[Lease]:
        limits = self.limits.for_model(pool.model)
        offers: list[Lease] = []
        while len(pool.queue) and pool.capacity(limits.max_concurrency) > 0:
            worker = max(pool.workers.values(), key=lambda w: w.free_slots, default=None)
            worker_free = worker is not None and worker.free_slots > 0
            request = next_request(pool.queue, pool.leases.values(), limits, worker_free)
            if request is None:
                break
            self._by_request_id.pop(request.request_id, None)
            pool.dispatched += 1
            if request.ticket:
                lease = self._lease_for(request, "", now_ms)
                self._hold_ticket(lease)
            else:
                assert worker is not None
                lease = self._lease_for(request, worker.worker_id, now_ms)
                worker.leases.add(request.stream_seq)
            pool.leases[request.stream_seq] = lease
            offers.append(lease)
        return offers

    def _hold_ticket(self, lease: Lease) -> None:
        self._tickets[lease.request_id] = lease.stream_seq
        heapq.heappush(self._ticket_cutoffs, (lease.cutoff_ms, lease.stream_seq))

    def expire_tickets(self, now_ms: int) -> list[Lease]:
        """Tickets held past their cut-off: their slots are free; the caller deletes their records."""
        expired = []
        while self._ticket_cutoffs and self._ticket_cutoffs[0][0] <= now_ms:
            cutoff_ms, seq = heapq.heappop(self._ticket_cutoffs)
            model = self._model_of.get(seq)
            lease = None if model is None else self.pools[model].leases.get(seq)
            if lease is not None and lease.ticket and lease.cutoff_ms == cutoff_ms:
                self.lease_ended(seq, now_ms)
                expired.append(lease)
        return expired

    def release_ticket(self, request_id: str, now_ms: int, owner: str | None = None) -> Lease | None:
        """An app is done with its ticket (found by id, released by `owner`, see `may_cancel`): the slot is
        free at once."""
        seq = self._tickets.get(request_id)
        if seq is None:
            return None
        model = self._model_of[seq]
        lease = self.pools[model].leases.get(seq)
        if lease is not None and not may_cancel(owner, lease.reply_to):
            return None
        self.lease_ended(seq, now_ms)
        return lease

    def withdraw(self, stream_seq: int) -> Lease | None:
        """Take back a lease before it is offered (its request was cancelled): the slot is free at once,
        and no service time is learned from it."""
        lease = self._drop_lease(stream_seq)
        if lease is not None:
            self._model_of.pop(stream_seq, None)
        return lease

    def offer_refused(self, stream_seq: int) -> None:
        """The worker said no (full or draining): back to the queue, same attempt, no offers until it beats."""
        lease = self._drop_lease(stream_seq)
        if lease is None:
            return
        worker = self._pool(lease.model).workers.get(lease.worker_id)
        if worker is not None:
            worker.refusing = True
        self._enqueue(self._pool(lease.model), waiting_from(lease, lease.attempt))

    def worker_gone(self, worker_id: str, now_ms: int, offered: Collection[int] = ()) -> list[WaitingRequest]:
        """No one answers on the worker's subject: forget it and re-queue its leases. The leases whose offer
        found it gone (`offered`) never ran there, so they keep their attempt (no step towards a dead letter)."""
        for pool in self.pools.values():
            worker = pool.workers.pop(worker_id, None)
            if worker is not None:
                for seq in offered:
                    if seq in worker.leases:
                        self.offer_refused(seq)
                return self._requeue_lost(pool, sorted(worker.leases), now_ms)
        return []

    def lease_ended(self, stream_seq: int, now_ms: int) -> None:
        """The worker ended the lease (`LeasesDone`): the request got its final reply and left the stream."""
        lease = self._drop_lease(stream_seq)
        if lease is not None:
            pool = self._pool(lease.model)
            worker = pool.workers.get(lease.worker_id)
            if worker is not None:  # its last heartbeat may still list the lease: it ran, it must not be adopted
                worker.reported = worker.reported - {stream_seq}
            service_ms = max(1, now_ms - lease.leased_ms)
            pool.service_ms_ema = service_ms if not pool.completed else 0.8 * pool.service_ms_ema + 0.2 * service_ms
            pool.completed += 1
            self._model_of.pop(stream_seq, None)
            return
        self._forget_waiting(stream_seq)  # a rebuild had queued what a worker meanwhile finished

    def _drop_lease(self, stream_seq: int) -> Lease | None:
        model = self._model_of.get(stream_seq)
        if model is None:
            return None
        pool = self._pool(model)
        lease = pool.leases.pop(stream_seq, None)
        if lease is not None:
            worker = pool.workers.get(lease.worker_id)
            if worker is not None:
                worker.leases.discard(stream_seq)
            if lease.ticket:
                self._tickets.pop(lease.request_id, None)
        return lease

    def restore_lease(self, lease: Lease, now_ms: int) -> None:
        """A lease found in `IRIS_LEASES` (restart, or written by another broker): it runs on its worker."""
        if self.knows(lease.stream_seq):
            return
        pool = self._pool(lease.model)
        self._model_of[lease.stream_seq] = lease.model
        pool.leases[lease.stream_seq] = lease
        if lease.ticket:
            self._hold_ticket(lease)
            return
        worker = pool.workers.get(lease.worker_id)
        if worker is None:
            # Unknown until it beats; slots=0 keeps new offers away, the timeout reclaims its leases.
            worker = pool.workers[lease.worker_id] = WorkerState(lease.worker_id, lease.model, 0, now_ms)
        worker.leases.add(lease.stream_seq)

    def heartbeat(self, beat: Heartbeat, now_ms: int) -> list[WaitingRequest]:
        """A worker is alive; leases it should be running but does not list go back to the queue."""
        pool = self._pool(beat.model)
        worker = pool.workers.get(beat.worker_id)
        if worker is None:
            worker = pool.workers[beat.worker_id] = WorkerState(beat.worker_id, beat.model, beat.slots, now_ms)
        worker.slots, worker.last_seen_ms = beat.slots, now_ms
        pool.ever_served = True
        worker.refusing, worker.draining = False, beat.draining
        running = worker.reported = frozenset(beat.running)
        for seq in running - worker.leases:
            request = pool.queue.remove(seq)
            if request is not None:
                self._adopt(pool, request, worker, now_ms)
        lost = [
            seq
            for seq in worker.leases
            if seq not in running and now_ms - pool.leases[seq].leased_ms > self.limits.lease_confirm_ms
        ]
        return self._requeue_lost(pool, lost, now_ms)

    def _requeue_lost(self, pool: ModelPool, seqs: list[int], now_ms: int) -> list[WaitingRequest]:
        """Lost leases go back to the queue with `attempt + 1`, unless that was the `max_attempts`-th worker
        lost in a row (a poison prompt crashes each one): then it is a dead letter (`take_dead_letters`)."""
        requeued = []
        for seq in seqs:
            lease = self._drop_lease(seq)
            if lease is None:
                continue
            if lease.attempt >= self.limits.max_attempts:
                self._model_of.pop(seq, None)
                self._dead_letters.append(waiting_from(lease, lease.attempt))
                continue
            request = waiting_from(lease, lease.attempt + 1)
            self._enqueue(pool, request)
            requeued.append(request)
        return requeued

    def tick(self, now_ms: int) -> tuple[list[WaitingRequest], list[WaitingRequest]]:
        """Time passed: returns (requests re-queued from dead workers, waiting requests past their deadline)."""
        requeued: list[WaitingRequest] = []
        for pool in self.pools.values():
            dead = [w for w in pool.workers.values() if now_ms - w.last_seen_ms > self.limits.worker_timeout_ms]
            for worker in dead:
                del pool.workers[worker.worker_id]
                requeued += self._requeue_lost(pool, sorted(worker.leases), now_ms)
        return requeued, self._expire(now_ms)

    def take_dead_letters(self) -> list[WaitingRequest]:
        """Requests given up on since the last call (`attempt` = workers tried); they are no longer known."""
        dead, self._dead_letters = self._dead_letters, []
        return dead

    def _expire(self, now_ms: int) -> list[WaitingRequest]:
        expired = []
        while self._deadlines and self._deadlines[0][0] <= now_ms:
            _, seq = heapq.heappop(self._deadlines)
            request = self._forget_waiting(seq)
            if request is not None:
                expired.append(request)
        if len(self._deadlines) > 2 * len(self._model_of) + 1024:  # entries of requests already gone, lazily
            self._deadlines = [(deadline, seq) for deadline, seq in self._deadlines if seq in self._model_of]
            heapq.heapify(self._deadlines)
        return expired

    def lease_usage(self, done: LeaseDone, now_ms: int) -> None:
        """Actual tokens of a finished lease: learn the workload's completion length and the engine time per
        token, and charge the flow the difference to what it was charged up front, so a bad estimate does
        not skew shares."""
        pool = self.pools.get(done.model)
        if pool is None:
            return
        lease = pool.leases.get(done.stream_seq)
        run_ms = done.run_ms or (now_ms - lease.leased_ms if lease is not None else 0)
        if run_ms > 0 and lease is not None:
            # Keyed by the cost the queue holds for it (the estimate, or `Iris-Tokens`), not by the tokens it
            # really took: the work ahead of a waiting request is summed in those same estimates, so what an
            # estimate of that size really took is what prices it (a prompt estimated from the body's bytes
            # is several times its real tokens for a short request).
            pool.service_time.learn(lease.cost_tokens or done.prompt_tokens + done.completion_tokens, run_ms)
        pool.completion_tokens_ema.learn(done.workload, float(done.completion_tokens))
        if lease is not None and lease.cost_tokens:
            delta = done.prompt_tokens + done.completion_tokens - lease.cost_tokens
            pool.queue.charge_back(lease, delta)

    def cancel_waiting(self, request_id: str, owner: str | None = None) -> WaitingRequest | None:
        """Remove a waiting request by id when `owner` may cancel it (`may_cancel`); a running one is
        stopped by its worker, not here."""
        seq = self._by_request_id.get(request_id)
        model = self._model_of.get(seq) if seq is not None else None
        request = self.pools[model].queue.get(seq) if seq is not None and model is not None else None
        if request is None or not may_cancel(owner, request.reply_to):
            return None
        return self._forget_waiting(request.stream_seq)

    def waiting(self, model: str) -> int:
        pool = self.pools.get(model)
        return len(pool.queue) if pool else 0

    def running(self, model: str) -> int:
        pool = self.pools.get(model)
        return len(pool.leases) if pool else 0
