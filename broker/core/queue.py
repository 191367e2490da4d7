"""The waiting-request index and the queue interface that orders it.

A `WaitingRequest` is the compact, prompt-free index entry the broker keeps for every request in the
stream. `RequestQueue` is the one seam between "who is waiting" and "in which order they run": the
foundation ships `FifoQueue` (stream order); the weighted-fair queue plugs in behind the same methods.
`pop(eligible)` takes the best request that may start now (`Eligible`: a free worker slot, or a ticket,
and a label value not at its cap); FIFO finds it by looking past the ineligible ones at the head.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from schemas.messages import StreamEntry

# "share": a workload's share is its weight x the priority it serves (Aperture); "strict": higher priority
# bands always first, fair inside a band, `min_share` for the bands below (vLLM, llm-d).
PriorityMode = Literal["share", "strict"]
DEFAULT_COST_TOKENS = 256  # expected completion tokens before a workload has shown its own


class WaitingRequest(StreamEntry, frozen=True, gc=False):
    priority: int = 1
    user: str = ""
    cost_tokens: int = 0  # Iris-Tokens; 0 = estimated when charged
    attempt: int = 1
    prompt_tokens_est: int = 0  # from the body size; the base of the estimate
    ticket: bool = False  # a ticket request: granted a ticket, run by the app, needs no worker
    end_user: str = ""  # Iris-End-User: splits the user's share, never adds to it
    owner: str = ""  # the subject's owner token ("" = none): its answer is stored under it


@dataclass(frozen=True)
class Eligible:
    """Which waiting requests may start now: tickets always, others only with a free worker slot;
    none whose `label` value (`user` or `workload`) is in `at_cap`; with `min_rank`, only those ranked at
    least that (a slot a suspension freed for them: `broker.core.preemption`; queues that rank nobody,
    FIFO, never get one)."""

    worker_free: bool = True
    label: str = ""
    at_cap: frozenset[str] = frozenset()
    min_rank: float = 0.0

    def workload_ok(self, workload: str) -> bool:
        return not (self.label == "workload" and workload in self.at_cap)

    def request_ok(self, request: WaitingRequest) -> bool:
        if not (request.ticket or self.worker_free):
            return False
        value = request.user if self.label == "user" else request.workload
        return not (self.label and value in self.at_cap)


class RequestQueue(Protocol):
    """Waiting requests of one model, in the order they should start."""

    def push(self, request: WaitingRequest) -> None: ...

    def pop(self, eligible: Eligible | None = None) -> WaitingRequest | None:
        """The next request to start (None: every waiting one is eligible)."""
        ...

    def remove(self, stream_seq: int) -> WaitingRequest | None: ...

    def get(self, stream_seq: int) -> WaitingRequest | None:
        """The waiting request, left in place (a cancel checks who asks before it removes)."""
        ...

    def position(self, stream_seq: int) -> int: ...

    def work_ahead(self, stream_seq: int) -> float:
        """Tokens (as estimated) that start before this request: what its start waits for."""
        ...

    def cost_of(self, stream_seq: int) -> int:
        """A waiting request's own cost, as estimated when it was pushed."""
        ...

    def count(self, workload: str) -> int: ...

    def top_priority(self, workload: str) -> int:
        """The highest priority waiting in a workload (1 when none)."""
        ...

    def count_user(self, user: str) -> int: ...

    def tickets(self) -> int:
        """Admission requests waiting."""
        ...

    def charge_back(self, labels: Any, delta_tokens: int) -> None:
        """A finished request (its `Lease`) cost `delta_tokens` more (or less) than it was charged."""
        ...

    def top_rank(self) -> float:
        """The highest rank waiting (preemption): weight x priority of the heaviest workload under
        shares, the top band under strict; 0 when nothing ranks (FIFO)."""
        ...

    def __len__(self) -> int: ...

    def __contains__(self, stream_seq: object) -> bool: ...


def default_estimate(request: WaitingRequest) -> int:
    """A request's cost without `Iris-Tokens` when the queue is given no learned estimate."""
    return request.prompt_tokens_est + DEFAULT_COST_TOKENS


class Tally:
    """Waiting requests counted per workload, per user and tickets: what limits and shortcuts ask."""

    def __init__(self) -> None:
        self.per_workload: Counter[str] = Counter()
        self.per_user: Counter[str] = Counter()
        self.tickets = 0

    def add(self, request: WaitingRequest, delta: int) -> None:
        _count(self.per_workload, request.workload, delta)
        _count(self.per_user, request.user, delta)
        self.tickets += delta if request.ticket else 0

    def none_eligible(self, eligible: Eligible, total: int) -> bool:
        """True when counts alone prove no waiting request is eligible (saves a scan)."""
        if not eligible.worker_free and self.tickets == 0:
            return True
        per_value = self.per_user if eligible.label == "user" else self.per_workload
        return bool(eligible.label) and sum(per_value[value] for value in eligible.at_cap) >= total


class TalliedQueue:
    """What every queue answers from its `Tally` (the counts limits and shortcuts ask for)."""

    _tally: Tally

    def count(self, workload: str) -> int:
        return self._tally.per_workload[workload]

    def count_user(self, user: str) -> int:
        return self._tally.per_user[user]

    def tickets(self) -> int:
        return self._tally.tickets


def _count(counter: Counter[str], key: str, delta: int) -> None:
    """Counts that drop to zero leave the map: its size follows what waits, not every value ever seen."""
    counter[key] += delta
    if not counter[key]:
        del counter[key]


class Lanes:
    """Stream-order heaps per label value and kind (ticket or not), for both labels: how FIFO finds the
    oldest eligible request without walking past every ineligible one (a user flooding the head while at
    its cap). Entries of requests gone are dropped lazily, and all are rebuilt when mostly stale."""

    def __init__(self) -> None:
        self.by_label: dict[str, dict[tuple[str, bool], list[int]]] = {"user": {}, "workload": {}}
        self.entries = 0

    def push(self, request: WaitingRequest) -> None:
        for label, value in (("user", request.user), ("workload", request.workload)):
            heapq.heappush(self.by_label[label].setdefault((value, request.ticket), []), request.stream_seq)
        self.entries += 2

    def oldest(self, eligible: Eligible, live: Mapping[int, WaitingRequest]) -> int | None:
        lanes = self.by_label[eligible.label or "workload"]
        best: int | None = None
        for (value, ticket), seqs in list(lanes.items()):
            if value in eligible.at_cap or not (ticket or eligible.worker_free):
                continue
            while seqs and seqs[0] not in live:
                heapq.heappop(seqs)
                self.entries -= 1
            if not seqs:
                del lanes[(value, ticket)]
            elif best is None or seqs[0] < best:
                best = seqs[0]
        return best

    def compact(self, live: Mapping[int, WaitingRequest]) -> None:
        if self.entries > 4 * len(live) + 256:
            self.by_label = {"user": {}, "workload": {}}
            self.entries = 0
            for request in live.values():
                self.push(request)


class FifoQueue(TalliedQueue):
    """First come, first served by stream sequence; a re-queued request keeps its original place."""

    def __init__(self, estimate: Callable[[WaitingRequest], int] | None = None) -> None:
        self._estimate = estimate or default_estimate
        self._costs: dict[int, int] = {}  # stream sequence → its cost when pushed
        self._cost_total = 0
        self._by_seq: dict[int, WaitingRequest] = {}
        self._heap: list[int] = []  # stream sequences; entries no longer in _by_seq are skipped lazily
        self._last_seq = 0
        self._tally = Tally()
        self._lanes = Lanes()

    def push(self, request: WaitingRequest) -> None:
        self._by_seq[request.stream_seq] = request
        cost = self._costs[request.stream_seq] = request.cost_tokens or self._estimate(request)
        self._cost_total += cost
        heapq.heappush(self._heap, request.stream_seq)
        self._last_seq = max(self._last_seq, request.stream_seq)
        self._tally.add(request, 1)
        self._lanes.push(request)

    def pop(self, eligible: Eligible | None = None) -> WaitingRequest | None:
        if eligible is None:
            while self._heap:
                request = self._by_seq.pop(heapq.heappop(self._heap), None)
                if request is not None:
                    return self._taken(request)
            return None
        if self._tally.none_eligible(eligible, len(self._by_seq)):
            return None
        seq = self._lanes.oldest(eligible, self._by_seq)
        return None if seq is None else self._taken(self._by_seq.pop(seq))

    def _taken(self, request: WaitingRequest) -> WaitingRequest:
        self._tally.add(request, -1)
        self._cost_total -= self._costs.pop(request.stream_seq)
        self._compact()
        return request

    def get(self, stream_seq: int) -> WaitingRequest | None:
        return self._by_seq.get(stream_seq)

    def remove(self, stream_seq: int) -> WaitingRequest | None:
        request = self._by_seq.pop(stream_seq, None)
        return None if request is None else self._taken(request)

    def _compact(self) -> None:
        if len(self._heap) > 2 * len(self._by_seq) + 64:
            self._heap = list(self._by_seq)
            heapq.heapify(self._heap)
        self._lanes.compact(self._by_seq)

    def position(self, stream_seq: int) -> int:
        """How many requests start before this one (0 = next)."""
        if stream_seq not in self._by_seq:
            raise KeyError(stream_seq)
        if stream_seq == self._last_seq:
            return len(self._by_seq) - 1  # the common case: a new arrival joins the back
        if self._heap and self._heap[0] == stream_seq:
            return 0
        return sum(1 for seq in self._by_seq if seq < stream_seq)

    def cost_of(self, stream_seq: int) -> int:
        return self._costs[stream_seq]

    def work_ahead(self, stream_seq: int) -> float:
        own = self._costs[stream_seq]
        if stream_seq == self._last_seq:
            return self._cost_total - own
        return sum(cost for seq, cost in self._costs.items() if seq < stream_seq)

    def top_priority(self, workload: str) -> int:
        return 1  # arrival order does not weigh priority

    def charge_back(self, labels: Any, delta_tokens: int) -> None:
        return None  # arrival order does not depend on cost

    def top_rank(self) -> float:
        return 0.0  # first come, first served: nobody outranks anybody

    def __len__(self) -> int:
        return len(self._by_seq)

    def __contains__(self, stream_seq: object) -> bool:
        return stream_seq in self._by_seq


def make_queue(
    policy: str,
    workload_weights: Mapping[str, float] | None = None,
    estimate: Callable[[WaitingRequest], int] | None = None,
    min_share: float = 0.0,
    priority_mode: PriorityMode = "share",
) -> RequestQueue:
    """The queue for a scheduling policy name (config `policy`) and, under WFQ, its `priority_mode`."""
    if policy == "fifo":
        return FifoQueue(estimate)
    if policy == "wfq" and priority_mode == "strict":
        from broker.core.strict import StrictQueue

        return StrictQueue(workload_weights, estimate=estimate, min_share=min_share)
    if policy == "wfq":
        from broker.core.wfq import WfqQueue

        return WfqQueue(workload_weights, estimate=estimate, min_share=min_share)
    raise ValueError(f"unknown scheduling policy {policy!r}")
