"""The waiting-request index and the queue interface that orders it.

A `WaitingRequest` is the compact, prompt-free index entry the broker keeps for every request in the
stream. `RequestQueue` is the one seam between "who is waiting" and "in which order they run": the
foundation ships `FifoQueue` (stream order); the weighted-fair queue plugs in behind the same methods.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Protocol

import msgspec


class WaitingRequest(msgspec.Struct, gc=False):
    stream_seq: int
    request_id: str
    model: str
    workload: str
    reply_to: str
    deadline_ms: int
    enqueued_ms: int
    priority: int = 1
    user: str = ""
    cost_tokens: int = 0  # Iris-Tokens; 0 = estimated when charged
    attempt: int = 1
    prompt_tokens_est: int = 0  # from the body size; the base of the estimate


class RequestQueue(Protocol):
    """Waiting requests of one model, in the order they should start."""

    def push(self, request: WaitingRequest) -> None: ...

    def pop(self) -> WaitingRequest | None: ...

    def remove(self, stream_seq: int) -> WaitingRequest | None: ...

    def position(self, stream_seq: int) -> int: ...

    def count(self, workload: str) -> int: ...

    def charge_back(self, workload: str, user: str, priority: int, delta_tokens: int) -> None:
        """A finished request cost `delta_tokens` more (or less) than it was charged."""
        ...

    def __len__(self) -> int: ...

    def __contains__(self, stream_seq: object) -> bool: ...


class FifoQueue:
    """First come, first served by stream sequence; a re-queued request keeps its original place."""

    def __init__(self) -> None:
        self._by_seq: dict[int, WaitingRequest] = {}
        self._heap: list[int] = []  # stream sequences; entries no longer in _by_seq are skipped lazily
        self._last_seq = 0
        self._per_workload: Counter[str] = Counter()

    def push(self, request: WaitingRequest) -> None:
        self._by_seq[request.stream_seq] = request
        heapq.heappush(self._heap, request.stream_seq)
        self._last_seq = max(self._last_seq, request.stream_seq)
        self._per_workload[request.workload] += 1

    def pop(self) -> WaitingRequest | None:
        while self._heap:
            seq = heapq.heappop(self._heap)
            request = self._by_seq.pop(seq, None)
            if request is not None:
                self._per_workload[request.workload] -= 1
                return request
        return None

    def remove(self, stream_seq: int) -> WaitingRequest | None:
        request = self._by_seq.pop(stream_seq, None)
        if request is not None:
            self._per_workload[request.workload] -= 1
        if len(self._heap) > 2 * len(self._by_seq) + 64:
            self._heap = list(self._by_seq)
            heapq.heapify(self._heap)
        return request

    def position(self, stream_seq: int) -> int:
        """How many requests start before this one (0 = next)."""
        if stream_seq not in self._by_seq:
            raise KeyError(stream_seq)
        if stream_seq == self._last_seq:
            return len(self._by_seq) - 1  # the common case: a new arrival joins the back
        if self._heap and self._heap[0] == stream_seq:
            return 0
        return sum(1 for seq in self._by_seq if seq < stream_seq)

    def count(self, workload: str) -> int:
        return self._per_workload[workload]

    def charge_back(self, workload: str, user: str, priority: int, delta_tokens: int) -> None:
        return None  # arrival order does not depend on cost

    def __len__(self) -> int:
        return len(self._by_seq)

    def __contains__(self, stream_seq: object) -> bool:
        return stream_seq in self._by_seq


def make_queue(
    policy: str,
    workload_weights: Mapping[str, float] | None = None,
    estimate: Callable[[WaitingRequest], int] | None = None,
) -> RequestQueue:
    """The queue for a scheduling policy name (config `policy`)."""
    if policy == "fifo":
        return FifoQueue()
    if policy == "wfq":
        from broker.wfq import WfqQueue

        return WfqQueue(workload_weights, estimate=estimate)
    raise ValueError(f"unknown scheduling policy {policy!r}")
