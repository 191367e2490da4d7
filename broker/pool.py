"""What the scheduler knows about one model: its workers, leases, waiting queue and learned costs.

Plain state, no decisions; `broker.scheduler` changes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from broker.queue import RequestQueue, WaitingRequest
from broker.queue_updates import QueueUpdatePlan
from broker.service_time import ServiceTime
from broker.wfq import DEFAULT_COST_TOKENS
from schemas.messages import Lease


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
    model: str
    queue: RequestQueue
    workers: dict[str, WorkerState] = field(default_factory=dict)
    leases: dict[int, Lease] = field(default_factory=dict)
    service_ms_ema: float = 2_000.0
    completed: int = 0  # leases ended: until one has, service time is a guess and no deadline is judged
    completion_tokens_ema: dict[str, float] = field(default_factory=dict)  # per workload, learned from usage
    dispatched: int = 0  # leases handed out so far: the clock queue positions are estimated against
    updates: QueueUpdatePlan = field(default_factory=QueueUpdatePlan)  # QueueUpdates still to send
    # Engine time of answers as their workers measured it: what the start estimate prices the work ahead at.
    service_time: ServiceTime = field(default_factory=ServiceTime)
    ever_served: bool = False  # a worker of this model has beaten: its waiting requests wait for workers

    def live_slots(self) -> int:
        return sum(w.slots for w in self.workers.values() if not w.draining)

    def parallelism(self, max_concurrency: int) -> int:
        """How many of the model's requests run at once: its cap, or its worker slots when fewer."""
        live = self.live_slots()
        if not self.workers:
            return max(1, max_concurrency)
        return max(1, min(max_concurrency or live, live))

    def capacity(self, max_concurrency: int) -> int:
        """Leases and tickets the model may still grant. A draining worker's slots and leases leave the
        count together: while it finishes long answers, the model's other workers fill up."""
        draining = sum(len(w.leases) for w in self.workers.values() if w.draining)
        return (max_concurrency or self.live_slots()) - (len(self.leases) - draining)


def estimate(pool: ModelPool, request: WaitingRequest) -> int:
    """Tokens a request without `Iris-Tokens` will cost: its prompt, plus the completion length its
    workload has shown so far."""
    expected = pool.completion_tokens_ema.get(request.workload, DEFAULT_COST_TOKENS)
    return request.prompt_tokens_est + round(expected)


def waiting_from(lease: Lease, attempt: int) -> WaitingRequest:
    fields = {name: getattr(lease, name) for name in SHARED_FIELDS}
    return WaitingRequest(**{**fields, "attempt": attempt})


# What a lease and an index entry have in common: a lease is an entry plus who runs it, since when.
SHARED_FIELDS = tuple(f for f in WaitingRequest.__struct_fields__ if f in Lease.__struct_fields__)
