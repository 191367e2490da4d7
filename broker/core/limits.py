"""Per-model limits, and which waiting request may take a free slot under them.

A model's capacity is `max_concurrency` (or, when 0, the sum of its live workers' slots); leases and
tickets both count against it. With `limit_by` (`user` or `workload`) each value of that label
also has a cap, `limit_per_value`, that idle capacity may be *borrowed* past:

    A lease is granted to a value that already holds `limit_per_value` leases or more (a *borrowed*
    lease) only when no admissible waiting request belongs to a value below its cap. A waiting request
    is admissible when it is a ticket, or some worker of the model has a free slot; under WFQ only the
    first request of each flow is a candidate (a flow keeps stream order).

So a value exceeds its cap only with capacity nobody within their cap was waiting for, and the scheduler
stays work-conserving: while capacity is left, an admissible request never waits. Borrowed leases are not
preempted; they return when they end, and from then on waiters within their cap go first.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from broker.core.queue import Eligible, PriorityMode, RequestQueue, WaitingRequest
from schemas.messages import Lease

LimitLabel = Literal["", "user", "workload"]


@dataclass(frozen=True)
class ModelLimits:
    max_concurrency: int = 0  # 0 = the sum of the model's worker slots
    max_queue: int = 0  # waiting requests per workload; 0 = no limit but the stream's own
    max_inflight_ms: int = 0  # a lease or ticket held longer is cut off; 0 = no limit
    limit_by: LimitLabel = ""
    limit_per_value: int = 0  # leases per value of `limit_by` before borrowing
    min_share: float = 0.0  # WFQ: weights floored at this fraction of the heaviest active one
    priority_mode: PriorityMode = "share"  # WFQ: priority multiplies shares, or "strict" bands
    preempt_ratio: float = 0.0  # a waiting request this many times a running one's rank suspends it; 0 = off
    preempt_min_run_ms: int = 1_000  # a lease runs this long (since start or resume) before it may be suspended
    preempt_max_per_request: int = 3  # suspensions one request may take


@dataclass(frozen=True)
class SchedulerLimits:
    policy: str = "wfq"
    workload_weights: Mapping[str, float] = field(default_factory=dict)
    max_concurrency: int = 0  # per model; 0 = the sum of the model's worker slots
    worker_timeout_ms: int = 3_000
    lease_confirm_ms: int = 2_000  # a lease its worker's heartbeats never list after this is lost
    max_attempts: int = 3  # lost on this many workers in a row: a dead letter, not re-queued
    startup_grace_ms: int = 1_500  # no offers until every live worker has beaten once (adopts its leases)
    max_queue: int = 0  # waiting requests per (model, workload); 0 = no limit but the stream's own
    max_inflight_ms: int = 0  # a lease running longer is cut off by its worker; 0 = no limit
    limit_by: LimitLabel = ""
    limit_per_value: int = 0
    min_share: float = 0.0
    priority_mode: PriorityMode = "share"
    preempt_ratio: float = 0.0
    preempt_min_run_ms: int = 1_000
    preempt_max_per_request: int = 3
    models: Mapping[str, ModelLimits] = field(default_factory=dict)  # complete limits of configured models

    def for_model(self, model: str) -> ModelLimits:
        """The model's own limits when configured, else the flat defaults."""
        own = self.models.get(model)
        return own if own is not None else self.flat

    @functools.cached_property
    def flat(self) -> ModelLimits:
        """The flat defaults, built once (a hot path asks for them on every decision)."""
        return ModelLimits(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ModelLimits)})


def label_value(request: WaitingRequest | Lease, label: LimitLabel) -> str:
    return request.user if label == "user" else request.workload


def values_at_cap(leases: Iterable[Lease], limits: ModelLimits) -> frozenset[str]:
    """Values of `limit_by` holding `limit_per_value` leases or more: they may only borrow."""
    if not limits.limit_by or limits.limit_per_value <= 0:
        return frozenset()
    held = Counter(label_value(lease, limits.limit_by) for lease in leases)
    return frozenset(value for value, count in held.items() if count >= limits.limit_per_value)


def next_request(
    queue: RequestQueue, leases: Iterable[Lease], limits: ModelLimits, worker_free: bool, min_rank: float = 0.0
) -> WaitingRequest | None:
    """The best admissible request (ranked at least `min_rank`), preferring values below their cap; a value
    at its cap borrows only when no one below theirs can start."""
    at_cap = values_at_cap(leases, limits)
    if at_cap:
        within = queue.pop(Eligible(worker_free, limits.limit_by, at_cap, min_rank))
        if within is not None:
            return within
    if min_rank:
        return queue.pop(Eligible(worker_free, min_rank=min_rank))
    return queue.pop(None if worker_free else Eligible(worker_free=False))
