"""What the scheduler knows about one model: its workers (indexed, `broker.core.workers`), leases, waiting
queue and learned costs.

Plain state, no decisions; `broker.core.scheduler` changes it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from broker.core.queue import DEFAULT_COST_TOKENS, RequestQueue, WaitingRequest
from broker.core.queue_updates import QueueUpdatePlan
from broker.core.service_time import ServiceTime
from broker.core.workers import WorkerBook
from schemas.messages import Lease

# Workloads whose completion length a model remembers: workload names come from request subjects, which any
# client may invent, so the least recently finished ones are forgotten past this many (they fall back to the
# default estimate until they have finished again).
MAX_LEARNED_WORKLOADS = 1024


class CompletionLengths:
    """Completion tokens per workload, an exponential moving average learned from usage; at most
    `max_workloads` of them, the least recently learned forgotten first."""

    def __init__(self, max_workloads: int = MAX_LEARNED_WORKLOADS) -> None:
        self.max_workloads = max_workloads
        self._ema: OrderedDict[str, float] = OrderedDict()

    def get(self, workload: str) -> float | None:
        return self._ema.get(workload)

    def learn(self, workload: str, tokens: float) -> None:
        ema = self._ema.pop(workload, None)
        self._ema[workload] = tokens if ema is None else 0.8 * ema + 0.2 * tokens
        while len(self._ema) > self.max_workloads:
            self._ema.popitem(last=False)

    def __len__(self) -> int:
        return len(self._ema)


@dataclass
class ModelPool:
    model: str
    queue: RequestQueue
    workers: WorkerBook = field(default_factory=WorkerBook)  # indexed: no decision walks them
    leases: dict[int, Lease] = field(default_factory=dict)
    service_ms_ema: float = 2_000.0
    completed: int = 0  # leases ended: until one has, service time is a guess and no deadline is judged
    completion_tokens_ema: CompletionLengths = field(default_factory=CompletionLengths)  # per workload
    dispatched: int = 0  # leases handed out so far: the clock queue positions are estimated against
    updates: QueueUpdatePlan = field(default_factory=QueueUpdatePlan)  # QueueUpdates still to send
    # Engine time of answers as their workers measured it: what the start estimate prices the work ahead at.
    service_time: ServiceTime = field(default_factory=ServiceTime)
    ever_served: bool = False  # a worker of this model has beaten: its waiting requests wait for workers
    suspended: dict[int, int] = field(default_factory=dict)  # leases suspended (no slot) → since, ms

    def live_slots(self) -> int:
        return self.workers.live_slots

    def parallelism(self, max_concurrency: int) -> int:
        """How many of the model's requests run at once: its cap, or its worker slots when fewer."""
        live = self.live_slots()
        if not self.workers:
            return max(1, max_concurrency)
        return max(1, min(max_concurrency or live, live))

    def capacity(self, max_concurrency: int) -> int:
        """Leases and tickets the model may still grant. A draining worker's slots and leases leave the
        count together: while it finishes long answers, the model's other workers fill up. A suspended lease
        holds no slot."""
        held = len(self.leases) - self.workers.draining_leases - len(self.suspended)
        return (max_concurrency or self.workers.live_slots) - held


def estimate(pool: ModelPool, request: WaitingRequest) -> int:
    """Tokens a request without `Iris-Tokens` will cost: its prompt, plus the completion length its
    workload has shown so far."""
    expected = pool.completion_tokens_ema.get(request.workload)
    return request.prompt_tokens_est + round(DEFAULT_COST_TOKENS if expected is None else expected)


def waiting_from(lease: Lease, attempt: int) -> WaitingRequest:
    fields = {name: getattr(lease, name) for name in SHARED_FIELDS}
    return WaitingRequest(**{**fields, "attempt": attempt})


# What a lease and an index entry have in common: a lease is an entry plus who runs it, since when.
SHARED_FIELDS = tuple(f for f in WaitingRequest.__struct_fields__ if f in Lease.__struct_fields__)
