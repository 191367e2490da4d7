"""Shared builders for the broker's unit tests: waiting requests, worker heartbeats, a scheduler past its
start-up grace, and queues kept saturated and popped turn by turn (simulated clock, no server)."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable

from broker.core.decisions import Decisions, Queued, Rejection
from broker.core.limits import SchedulerLimits
from broker.core.queue import RequestQueue, WaitingRequest
from broker.core.scheduler import Cancelled, Scheduler
from schemas.messages import Heartbeat

T0 = 1_000_000
GRACE = SchedulerLimits().startup_grace_ms
Flow = tuple[str, str, int]  # (workload, user, priority)
_seq = itertools.count(1)


def request(
    seq: int,
    deadline_ms: int = T0 + 600_000,
    model: str = "m",
    *,
    workload: str = "default",
    user: str = "",
    priority: int = 1,
    cost: int = 0,
    ticket: bool = False,
) -> WaitingRequest:
    """Request `seq` (id `r<seq>`, inbox `_INBOX.<seq>`), stored at T0."""
    return WaitingRequest(
        seq, f"r{seq}", model, workload, f"_INBOX.{seq}", deadline_ms, T0, priority, user, cost, ticket=ticket
    )


def beat(worker: str, slots: int, running: list[int], now: int, model: str = "m") -> Heartbeat:
    return Heartbeat(worker, model, slots, slots - len(running), running, 0.0, now)


def verdict(decisions: Decisions) -> Queued | Rejection | None:
    """What an `enqueue` decided for its one request: queued, rejected, or nothing (known, adopted)."""
    assert len(decisions.queued) + len(decisions.rejections) <= 1, decisions
    return (decisions.queued or decisions.rejections or (None,))[0]


def ready_scheduler(
    workers: dict[str, int],
    max_concurrency: int = 0,
    limits: SchedulerLimits | None = None,
    cancelled: Cancelled | None = None,
) -> tuple[Scheduler, int]:
    """A scheduler past its start-up grace that has heard each worker (name → slots); and that now."""
    limits = limits or SchedulerLimits(max_concurrency=max_concurrency)
    scheduler = Scheduler(limits, T0) if cancelled is None else Scheduler(limits, T0, cancelled=cancelled)
    now = T0 + GRACE
    for worker, slots in workers.items():
        scheduler.heartbeat(beat(worker, slots, [], now), now)
    return scheduler, now


def req(
    workload: str = "default", user: str = "", priority: int = 1, cost: int = 100, end_user: str = ""
) -> WaitingRequest:
    """A queue entry of the next sequence that never expires."""
    seq = next(_seq)
    return WaitingRequest(seq, f"r{seq}", "m", workload, "_INBOX.x", 10**15, 0, priority, user, cost, end_user=end_user)


def fill(queue: RequestQueue, flows: dict[Flow, int], depth: int) -> None:
    """`depth` requests of each flow (flow → cost in tokens) into `queue`."""
    for (workload, user, priority), cost in flows.items():
        for _ in range(depth):
            queue.push(req(workload, user, priority, cost))


def served_tokens(queue: RequestQueue, pops: int, refill: dict[Flow, int]) -> Counter[Flow]:
    """Pop `pops` times, pushing a new request of each popped flow (saturation); tokens served per flow."""
    served: Counter[Flow] = Counter()
    for _ in range(pops):
        request = queue.pop()
        assert request is not None
        key = (request.workload, request.user, request.priority)
        served[key] += request.cost_tokens
        queue.push(req(*key, refill[key]))
    return served


def saturate(queue: RequestQueue, flows: dict[Flow, int], pops: int, depth: int = 3) -> Counter[Flow]:
    """Every flow keeps `depth` requests waiting; tokens served per flow over `pops` turns."""
    fill(queue, flows, depth)
    return served_tokens(queue, pops, flows)


def shares(served: Counter[Flow]) -> dict[Flow, float]:
    total = sum(served.values())
    return {key: tokens / total for key, tokens in served.items()}


def assert_shares(served: Counter[Flow], target: dict[Flow, float], tolerance: float = 0.05) -> None:
    """Each flow's token share within `tolerance` (relative) of its target."""
    got = shares(served)
    for key, share in target.items():
        assert abs(got.get(key, 0.0) - share) <= tolerance * share, (key, got.get(key), share)


def assert_min_share(served: Counter[Flow], flows: Iterable[Flow], min_share: float, c_max: int) -> None:
    """Any two backlogged `flows` f, g (served or not): served(f) >= min_share * (served(g) - c_max), `c_max`
    the largest request cost."""
    for f, g in itertools.permutations(flows, 2):
        assert served[f] >= min_share * (served[g] - c_max) - 1e-6, (f, g, served)
