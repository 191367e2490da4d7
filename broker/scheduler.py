"""The broker's decision logic: pure, synchronous, clock passed in, no I/O.

The async service feeds it events (a request appeared, a worker beat, a lease ended, time passed) and
carries out what it returns (offer these leases, send these errors, re-queue these). Invariants it keeps:
a request is either waiting in its model's queue or held by exactly one lease, never both; a model never
has more leases than `max_concurrency` nor a worker more than its slots; a lease on a worker that stopped
beating, or that its worker no longer lists, goes back to the queue with `attempt + 1`.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial

from broker.queue import FifoQueue, RequestQueue, WaitingRequest, make_queue
from broker.wfq import DEFAULT_COST_TOKENS, WfqQueue
from schemas.errors import ErrorCode
from schemas.messages import Heartbeat, Lease, LeaseDone

MIN_POSITION_FOR_UPDATES = 4  # nearer the head, the admission update says enough


@dataclass(frozen=True)
class SchedulerLimits:
    policy: str = "wfq"
    workload_weights: Mapping[str, float] = field(default_factory=dict)
    max_concurrency: int = 0  # per model; 0 = the sum of the model's worker slots
    worker_timeout_ms: int = 3_000
    lease_confirm_ms: int = 2_000  # a lease its worker's heartbeats never list after this is lost
    startup_grace_ms: int = 1_500  # no offers until every live worker has beaten once (adopts its leases)
    max_queue: int = 0  # waiting requests per (model, workload); 0 = no limit but the stream's own
    max_inflight_ms: int = 0  # a lease running longer is cut off by its worker; 0 = no limit


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


@dataclass
class WorkerState:
    worker_id: str
    model: str
    slots: int
    last_seen_ms: int
    leases: set[int] = field(default_factory=set)
    refusing: bool = False  # refused an offer; no more offers until its next heartbeat
    draining: bool = False
    reported: frozenset[int] = frozenset()  # what its last heartbeat listed as running

    @property
    def free_slots(self) -> int:
        if self.refusing or self.draining:
            return 0
        return max(0, self.slots - len(self.leases))


@dataclass
class ModelPool:
    queue: RequestQueue
    workers: dict[str, WorkerState] = field(default_factory=dict)
    leases: dict[int, Lease] = field(default_factory=dict)
    service_ms_ema: float = 2_000.0
    completed: int = 0  # leases ended: until one has, service time is a guess and no deadline is judged
    completion_tokens_ema: dict[str, float] = field(default_factory=dict)  # per workload, learned from usage
    dispatched: int = 0  # leases handed out so far: the clock queue positions are estimated against
    # QueueUpdates still to send: (dispatch count when due, seq, position then, dispatch count then, reply_to, id)
    updates_due: list[tuple[int, int, int, int, str, str]] = field(default_factory=list)


class Scheduler:
    def __init__(self, limits: SchedulerLimits, now_ms: int) -> None:
        self.limits = limits
        self.started_ms = now_ms
        self.pools: dict[str, ModelPool] = {}
        self._model_of: dict[int, str] = {}  # every known stream sequence → its model
        self._deadlines: list[tuple[int, int]] = []  # (deadline_ms, seq) of waiting requests, lazy
        self._by_request_id: dict[str, int] = {}  # request id → stream sequence, while waiting

    def _pool(self, model: str) -> ModelPool:
        pool = self.pools.get(model)
        if pool is None:
            pool = self.pools[model] = ModelPool(queue=FifoQueue())
            pool.queue = make_queue(self.limits.policy, self.limits.workload_weights, partial(_estimate, pool))
        return pool

    def update_limits(self, limits: SchedulerLimits) -> None:
        """Live reload: new limits and weights apply to the next decision. The policy stays as started
        (the waiting index is ordered by it); leases already running keep their cut-off."""
        self.limits = dataclasses.replace(limits, policy=self.limits.policy)
        for pool in self.pools.values():
            if isinstance(pool.queue, WfqQueue):
                pool.queue.weights = dict(limits.workload_weights)

    def knows(self, stream_seq: int) -> bool:
        return stream_seq in self._model_of

    def _live_slots(self, pool: ModelPool) -> int:
        return sum(w.slots for w in pool.workers.values() if not w.draining)

    def _eta_s(self, pool: ModelPool, position: int) -> float:
        slots = max(1, self._live_slots(pool))
        return round((position // slots + 1) * pool.service_ms_ema / 1000.0, 3)

    def admit(self, request: WaitingRequest, now_ms: int) -> Admitted | Rejection | None:
        """A request seen in the stream; None when it is already known (redelivery, rebuild)."""
        if self.knows(request.stream_seq):
            return None
        if request.deadline_ms <= now_ms:
            return Rejection(request, ErrorCode.DEADLINE_EXCEEDED, "deadline passed before the request was queued")
        pool = self._pool(request.model)
        warmed_up = now_ms - self.started_ms >= self.limits.worker_timeout_ms
        if warmed_up and not pool.workers:
            retry_s = self.limits.worker_timeout_ms / 1000.0
            return Rejection(request, ErrorCode.NO_CAPACITY, f"no worker serves model {request.model!r}", retry_s)
        runner = next((w for w in pool.workers.values() if request.stream_seq in w.reported), None)
        if runner is not None:  # a worker already runs it (its lease record was lost): adopt, never re-run
            self._adopt(pool, request, runner, now_ms)
            return None
        if self.limits.max_queue and pool.queue.count(request.workload) >= self.limits.max_queue:
            waiting = pool.queue.count(request.workload)
            message = f"workload {request.workload!r} already has {waiting} requests waiting (max_queue)"
            return Rejection(request, ErrorCode.QUEUE_FULL, message, max(1.0, self._eta_s(pool, 0)))
        self._enqueue(pool, request)
        position = pool.queue.position(request.stream_seq)
        start_ms = now_ms + self._start_delay_ms(pool, position)
        if pool.completed and start_ms > request.deadline_ms:
            self._forget_waiting(request.stream_seq)
            wait_s = (start_ms - now_ms) / 1000
            message = f"estimated start in {wait_s:.1f} s (queue position {position}) is past the deadline"
            return Rejection(request, ErrorCode.DEADLINE_UNMEETABLE, message, round(wait_s, 3))
        self._plan_update(pool, request.stream_seq, position, request.reply_to, request.request_id)
        return Admitted(request, position, self._eta_s(pool, position))

    def _plan_update(self, pool: ModelPool, seq: int, position: int, reply_to: str, request_id: str) -> None:
        """Tell the client again once half of the requests ahead of it have started."""
        if position >= MIN_POSITION_FOR_UPDATES:
            due = pool.dispatched + (position + 1) // 2
            heapq.heappush(pool.updates_due, (due, seq, position, pool.dispatched, reply_to, request_id))

    def queue_updates(self) -> list[tuple[str, str, int, float]]:
        """(reply_to, request id, position, eta_s) for waiting requests whose position halved since the
        last update. Position is estimated as the old one minus the leases handed out since."""
        out = []
        for pool in self.pools.values():
            while pool.updates_due and pool.updates_due[0][0] <= pool.dispatched:
                _, seq, position, then, reply_to, request_id = heapq.heappop(pool.updates_due)
                if seq not in pool.queue:
                    continue  # started, cancelled or expired meanwhile
                now_position = max(0, position - (pool.dispatched - then))
                out.append((reply_to, request_id, now_position, self._eta_s(pool, now_position)))
                self._plan_update(pool, seq, now_position, reply_to, request_id)
        return out

    def _start_delay_ms(self, pool: ModelPool, position: int) -> float:
        """Expected wait before the request at `position` starts: whole service rounds ahead of it."""
        free_now = max(0, min(self._capacity(pool), sum(w.free_slots for w in pool.workers.values())))
        if position < free_now:
            return 0.0
        concurrency = min(self.limits.max_concurrency or 1 << 30, max(1, self._live_slots(pool)))
        return ((position - free_now) // concurrency + 1) * pool.service_ms_ema

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

    def _capacity(self, pool: ModelPool) -> int:
        cap = self.limits.max_concurrency or self._live_slots(pool)
        return cap - len(pool.leases)

    def _adopt(self, pool: ModelPool, request: WaitingRequest, worker: WorkerState, now_ms: int) -> None:
        self._by_request_id.pop(request.request_id, None)
        pool.leases[request.stream_seq] = self._lease_for(request, worker.worker_id, now_ms)
        worker.leases.add(request.stream_seq)
        self._model_of[request.stream_seq] = request.model

    def _lease_for(self, request: WaitingRequest, worker_id: str, now_ms: int) -> Lease:
        cutoff_ms = now_ms + self.limits.max_inflight_ms if self.limits.max_inflight_ms else 0
        fields = {name: getattr(request, name) for name in _SHARED_FIELDS}
        fields["cost_tokens"] = request.cost_tokens or _estimate(self.pools[request.model], request)
        return Lease(**fields, worker_id=worker_id, leased_ms=now_ms, cutoff_ms=cutoff_ms)

    def dispatch(self, now_ms: int) -> list[Lease]:
        """Hand waiting requests to free slots, best first; the caller records and offers each lease."""
        offers: list[Lease] = []
        if now_ms - self.started_ms < self.limits.startup_grace_ms:
            return offers
        for pool in self.pools.values():
            while len(pool.queue) and self._capacity(pool) > 0:
                worker = max(pool.workers.values(), key=lambda w: w.free_slots, default=None)
                if worker is None or worker.free_slots == 0:
                    break
                request = pool.queue.pop()
                if request is None:
                    break
                self._by_request_id.pop(request.request_id, None)
                lease = self._lease_for(request, worker.worker_id, now_ms)
                pool.dispatched += 1
                pool.leases[request.stream_seq] = lease
                worker.leases.add(request.stream_seq)
                offers.append(lease)
        return offers

    def offer_refused(self, stream_seq: int) -> None:
        """The worker said no (full or draining): back to the queue, same attempt, no offers until it beats."""
        lease = self._drop_lease(stream_seq)
        if lease is None:
            return
        worker = self._pool(lease.model).workers.get(lease.worker_id)
        if worker is not None:
            worker.refusing = True
        self._enqueue(self._pool(lease.model), _waiting_from(lease, lease.attempt))

    def worker_gone(self, worker_id: str, now_ms: int) -> list[WaitingRequest]:
        """No one answers on the worker's subject: forget it and re-queue its leases."""
        for pool in self.pools.values():
            worker = pool.workers.pop(worker_id, None)
            if worker is not None:
                return self._requeue_lost(pool, sorted(worker.leases), now_ms)
        return []

    def lease_ended(self, stream_seq: int, now_ms: int) -> None:
        """The worker deleted the lease: the request got its final reply and left the stream."""
        lease = self._drop_lease(stream_seq)
        if lease is not None:
            pool = self._pool(lease.model)
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
        return lease

    def restore_lease(self, lease: Lease, now_ms: int) -> None:
        """A lease found in `IRIS_LEASES` (restart, or written by another broker): it runs on its worker."""
        if self.knows(lease.stream_seq):
            return
        pool = self._pool(lease.model)
        worker = pool.workers.get(lease.worker_id)
        if worker is None:
            # Unknown until it beats; slots=0 keeps new offers away, the timeout reclaims its leases.
            worker = pool.workers[lease.worker_id] = WorkerState(lease.worker_id, lease.model, 0, now_ms)
        pool.leases[lease.stream_seq] = lease
        worker.leases.add(lease.stream_seq)
        self._model_of[lease.stream_seq] = lease.model

    def heartbeat(self, beat: Heartbeat, now_ms: int) -> list[WaitingRequest]:
        """A worker is alive; leases it should be running but does not list go back to the queue."""
        pool = self._pool(beat.model)
        worker = pool.workers.get(beat.worker_id)
        if worker is None:
            worker = pool.workers[beat.worker_id] = WorkerState(beat.worker_id, beat.model, beat.slots, now_ms)
        worker.slots, worker.last_seen_ms = beat.slots, now_ms
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
        requeued = []
        for seq in seqs:
            lease = self._drop_lease(seq)
            if lease is None:
                continue
            request = _waiting_from(lease, lease.attempt + 1)
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

    def _expire(self, now_ms: int) -> list[WaitingRequest]:
        expired = []
        while self._deadlines and self._deadlines[0][0] <= now_ms:
            _, seq = heapq.heappop(self._deadlines)
            request = self._forget_waiting(seq)
            if request is not None:
                expired.append(request)
        return expired

    def lease_usage(self, done: LeaseDone) -> None:
        """Actual tokens of a finished lease: learn the workload's completion length, and charge the flow
        the difference to what it was charged up front, so a bad estimate does not skew shares."""
        pool = self.pools.get(done.model)
        if pool is None:
            return
        ema = pool.completion_tokens_ema.get(done.workload)
        tokens = float(done.completion_tokens)
        pool.completion_tokens_ema[done.workload] = tokens if ema is None else 0.8 * ema + 0.2 * tokens
        lease = pool.leases.get(done.stream_seq)
        if lease is not None and lease.cost_tokens:
            delta = done.prompt_tokens + done.completion_tokens - lease.cost_tokens
            pool.queue.charge_back(lease.workload, lease.user, lease.priority, delta)

    def cancel_waiting(self, request_id: str) -> WaitingRequest | None:
        """Remove a waiting request by id (a running one is stopped by its worker, not here)."""
        seq = self._by_request_id.get(request_id)
        return None if seq is None else self._forget_waiting(seq)

    def waiting(self, model: str) -> int:
        pool = self.pools.get(model)
        return len(pool.queue) if pool else 0

    def running(self, model: str) -> int:
        pool = self.pools.get(model)
        return len(pool.leases) if pool else 0


def _estimate(pool: ModelPool, request: WaitingRequest) -> int:
    """Tokens a request without `Iris-Tokens` will cost: its prompt, plus the completion length its
    workload has shown so far."""
    expected = pool.completion_tokens_ema.get(request.workload, DEFAULT_COST_TOKENS)
    return request.prompt_tokens_est + round(expected)


def _waiting_from(lease: Lease, attempt: int) -> WaitingRequest:
    fields = {name: getattr(lease, name) for name in _SHARED_FIELDS}
    return WaitingRequest(**{**fields, "attempt": attempt})


# What a lease and an index entry have in common: a lease is an entry plus who runs it, since when.
_SHARED_FIELDS = tuple(f for f in WaitingRequest.__struct_fields__ if f in Lease.__struct_fields__)
