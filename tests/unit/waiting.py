"""Shared builders for queue tests: waiting requests, and a saturated queue popped turn by turn."""

from __future__ import annotations

import itertools
from collections import Counter

from broker.core.queue import RequestQueue, WaitingRequest

_seq = itertools.count(1)
Flow = tuple[str, str, int]  # (workload, user, priority)


def req(
    workload: str = "default", user: str = "", priority: int = 1, cost: int = 100, end_user: str = ""
) -> WaitingRequest:
    seq = next(_seq)
    return WaitingRequest(seq, f"r{seq}", "m", workload, "_INBOX.x", 10**15, 0, priority, user, cost, end_user=end_user)


def saturate(queue: RequestQueue, flows: dict[Flow, int], pops: int, depth: int = 3) -> Counter[Flow]:
    """Every flow keeps `depth` requests waiting; tokens served per flow over `pops` turns."""
    for (workload, user, priority), cost in flows.items():
        for _ in range(depth):
            queue.push(req(workload, user, priority, cost))
    served: Counter[Flow] = Counter()
    for _ in range(pops):
        request = queue.pop()
        assert request is not None
        key = (request.workload, request.user, request.priority)
        served[key] += request.cost_tokens
        queue.push(req(*key, flows[key]))
    return served


def shares(served: Counter[Flow]) -> dict[Flow, float]:
    total = sum(served.values())
    return {key: tokens / total for key, tokens in served.items()}


def assert_shares(served: Counter[Flow], target: dict[Flow, float], tolerance: float = 0.05) -> None:
    """Each flow's token share within `tolerance` (relative) of its target."""
    got = shares(served)
    for key, share in target.items():
        assert abs(got.get(key, 0.0) - share) <= tolerance * share, (key, got.get(key), share)
