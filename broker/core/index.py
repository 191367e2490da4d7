"""What the scheduler knows, and the moves that keep it consistent; no decisions (`broker.core.scheduler`).

Every request the broker has seen is known by its stream sequence: waiting in its model's queue (also found
by request id, and by deadline in a lazy heap) or held by one lease (a worker's, or an app's ticket). The
moves here take a request between those places and keep every map in step; what to move, and when, is the
scheduler's to decide.
"""

from __future__ import annotations

import heapq
from functools import partial

from broker.core.limits import SchedulerLimits
from broker.core.pool import SHARED_FIELDS, ModelPool, estimate
from broker.core.queue import FifoQueue, WaitingRequest, make_queue
from broker.core.tickets import TICKET_MAX_HOLD_MS, TicketBook
from broker.core.workers import WorkerState
from schemas.messages import Lease, LeaseDone


class RequestIndex:
    def __init__(self, limits: SchedulerLimits) -> None:
        self.limits = limits
        self.pools: dict[str, ModelPool] = {}
        self._model_of: dict[int, str] = {}  # every known stream sequence → its model
        self._deadlines: list[tuple[int, int]] = []  # (deadline_ms, seq) of waiting requests, lazy
        self._by_request_id: dict[str, int] = {}  # request id → stream sequence, while waiting
        self.tickets = TicketBook()

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

    def knows(self, stream_seq: int) -> bool:
        return stream_seq in self._model_of

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
        pool.workers.lease(worker, request.stream_seq)
        self._model_of[request.stream_seq] = request.model

    def _lease_for(self, request: WaitingRequest, worker_id: str, now_ms: int) -> Lease:
        inflight_ms = self.limits.for_model(request.model).max_inflight_ms
        if request.ticket and not inflight_ms:
            inflight_ms = TICKET_MAX_HOLD_MS  # an app that vanishes must not hold a slot forever
        cutoff_ms = now_ms + inflight_ms if inflight_ms else 0
        fields = {name: getattr(request, name) for name in SHARED_FIELDS}
        fields["cost_tokens"] = request.cost_tokens or estimate(self.pools[request.model], request)
        return Lease(**fields, worker_id=worker_id, leased_ms=now_ms, cutoff_ms=cutoff_ms)

    def _withdraw(self, stream_seq: int) -> Lease | None:
        """Take back a lease before it is offered: the slot is free at once, no service time is learned."""
        lease = self._drop_lease(stream_seq)
        if lease is not None:
            self._model_of.pop(stream_seq, None)
        return lease

    def _lease_ended(self, stream_seq: int, now_ms: int) -> None:
        lease = self._drop_lease(stream_seq)
        if lease is not None:
            pool = self._pool(lease.model)
            worker = pool.workers.get(lease.worker_id)
            if worker is not None:  # its last heartbeat may still list the lease: it ran, it must not be adopted
                pool.workers.unlist(worker, stream_seq)
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
                pool.workers.release(worker, stream_seq)
            if lease.ticket:
                self.tickets.forget(lease.request_id)
        return lease

    def restore_lease(self, lease: Lease, now_ms: int) -> None:
        """A lease found in `IRIS_LEASES` (restart, or written by another broker): it runs on its worker
        (or is held by its app, for a ticket). Rebuilding state, it decides nothing."""
        if self.knows(lease.stream_seq):
            return
        pool = self._pool(lease.model)
        self._model_of[lease.stream_seq] = lease.model
        pool.leases[lease.stream_seq] = lease
        if lease.ticket:
            self.tickets.hold(lease)
            return
        worker = pool.workers.get(lease.worker_id)
        if worker is None:
            # Unknown until it beats; slots=0 keeps new offers away, the timeout reclaims its leases.
            worker = pool.workers.add(lease.worker_id, lease.model, 0, now_ms)
        pool.workers.lease(worker, lease.stream_seq)

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

    def _lease_usage(self, done: LeaseDone, now_ms: int) -> None:
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

    def waiting(self, model: str) -> int:
        pool = self.pools.get(model)
        return len(pool.queue) if pool else 0

    def running(self, model: str) -> int:
        pool = self.pools.get(model)
        return len(pool.leases) if pool else 0
