"""The scheduler's index with priority preemption's events (`broker.core.preemption` decides): what a round
resumes and suspends, whom a slot a suspension freed is for, the workers' answers to those orders, and a
lease that ends taking its suspension with it. Pure and synchronous like the rest of the core.
"""

from __future__ import annotations

from collections.abc import Sequence

from broker.core.decisions import ROUND_DUE, Decisions
from broker.core.index import RequestIndex
from broker.core.limits import SchedulerLimits
from broker.core.pool import ModelPool
from broker.core.preemption import Preemption
from broker.core.workers import WorkerState
from schemas.messages import Heartbeat, Lease


class PreemptingIndex(RequestIndex):
    def __init__(self, limits: SchedulerLimits) -> None:
        super().__init__(limits)
        self.preemption = Preemption()

    def _resumes_due(self, pool: ModelPool) -> list[Lease]:
        """Suspended leases to resume before this round hands out new slots."""
        if not pool.suspended:
            return []
        return self.preemption.resumes(pool, self.limits.for_model(pool.model), self.limits.workload_weights)

    def _suspends_due(self, pool: ModelPool, now_ms: int) -> list[Lease]:
        """Running leases to suspend after this round found no slot for a request that outranks them."""
        limits = self.limits.for_model(pool.model)
        return self.preemption.suspends(pool, limits, self.limits.workload_weights, now_ms)

    def _start_floor(self, pool: ModelPool) -> float:
        """The rank a request needs to start now: none the best waiting one would suspend (0: any)."""
        return self.preemption.start_floor(pool, self.limits.for_model(pool.model), self.limits.workload_weights)

    def _slot_handed_out(self, pool: ModelPool) -> None:
        self.preemption.slot_handed_out(pool)

    def suspend_answered(self, model: str, asked: Sequence[int], suspended: Sequence[int], now_ms: int) -> Decisions:
        """A worker's answer to a suspend order (`suspended` empty: none came): each suspended lease's slot
        is free for the next round."""
        if model in self.pools:
            self.preemption.suspend_answered(self.pools[model], asked, suspended, now_ms)
        return ROUND_DUE

    def resume_answered(self, model: str, resumed: Sequence[int], refused: Sequence[int], now_ms: int) -> Decisions:
        """A worker's answer to a resume order: refused ones wait suspended again (their slot is free)."""
        if model in self.pools:
            self.preemption.resume_answered(self.pools[model], resumed, refused, now_ms)
        return ROUND_DUE

    def _reconcile_suspended(self, pool: ModelPool, worker: WorkerState, beat: Heartbeat, now_ms: int) -> None:
        """What a worker's heartbeat lists as suspended, once no order of ours for it is in flight."""
        if beat.max_suspended or worker.suspended:
            self.preemption.reconcile(pool, worker, beat, now_ms, self.limits.lease_confirm_ms)

    def _drop_lease(self, stream_seq: int) -> Lease | None:
        model = self._model_of.get(stream_seq)
        lease = super()._drop_lease(stream_seq)
        if lease is not None and model is not None:
            self.preemption.book.forget(self.pools[model], lease)
        return lease
