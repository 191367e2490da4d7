"""Weighted fair queuing: the `RequestQueue` that decides whose request runs next.

Two levels of stride scheduling over virtual time. Workloads share a model by their configured weight;
inside a workload, flows `(user, priority)` share it by priority, so users at equal priority get equal
shares however many requests each sends, and priority 5 gets 5x the share of priority 1. Each workload
and flow keeps a virtual time = cost served / weight, where cost is the request's tokens; `pop` takes the
smallest at each level and charges it. A workload or flow that becomes active starts at the smallest
virtual time among those already active: idle time banks no credit, and a newcomer is served at once
however deep the others' backlog is. Inside a flow, requests keep stream order. Every operation is
O(log n); removal is lazy.

Minimum share (`min_share`, 0 = off): at each level a waiting entity's weight is raised to at least
`min_share` times the heaviest active weight there, so the lowest class is served at least `min_share`
as fast as the most favoured one (priority 1 beside priority 100, a workload of weight 1 beside one of
100) and never starves, however steep the weights. `pop(eligible)` skips workloads and flows that may not
start now (a value at its `limit_by` cap, a request that needs a worker while none is free) without
charging them, so they keep their turn.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Callable, Hashable, Mapping
from typing import Generic, TypeVar

from broker.queue import Eligible, Tally, WaitingRequest

K = TypeVar("K", bound=Hashable)
FlowKey = tuple[str, int]  # (user, priority)

DEFAULT_COST_TOKENS = 256
BYTES_PER_PROMPT_TOKEN = 4


def estimate_prompt_tokens(body_bytes: int) -> int:
    """Prompt tokens from the body size the headers-only consumer sees (`Nats-Msg-Size`)."""
    return max(1, body_bytes // BYTES_PER_PROMPT_TOKEN)


class StrideLevel(Generic[K]):
    """Entities that take turns in proportion to their weights; the virtual clock of one level."""

    def __init__(self) -> None:
        self.vtime: dict[K, float] = {}
        self.active: set[K] = set()
        self._heap: list[tuple[float, int, K]] = []
        self._order = itertools.count()
        self.floor = 0.0  # virtual time of the last turn: where a newly active entity starts

    def activate(self, key: K) -> None:
        if key in self.active:
            return
        self.active.add(key)
        start = max(self.vtime.get(key, self.floor), self._min_active_vtime())
        self.vtime[key] = start
        heapq.heappush(self._heap, (start, next(self._order), key))

    def _min_active_vtime(self) -> float:
        self._drop_stale()
        return self._heap[0][0] if self._heap else self.floor

    def _drop_stale(self) -> None:
        while self._heap:
            vtime, _, key = self._heap[0]
            if key in self.active and self.vtime.get(key) == vtime:
                return
            heapq.heappop(self._heap)

    def peek(self) -> K | None:
        self._drop_stale()
        return self._heap[0][2] if self._heap else None

    def peek_where(self, ok: Callable[[K], bool]) -> K | None:
        """The active key with the smallest virtual time that satisfies `ok`; those before it keep their place."""
        head = self.peek()
        if head is None or ok(head):
            return head
        skipped = []
        found = None
        while self._heap:
            entry = heapq.heappop(self._heap)
            vtime, _, key = entry
            if key not in self.active or self.vtime.get(key) != vtime:
                continue  # stale
            skipped.append(entry)
            if ok(key):
                found = key
                break
        for entry in skipped:
            heapq.heappush(self._heap, entry)
        return found

    def charge(self, key: K, cost: float, weight: float) -> None:
        """`key` just had a turn costing `cost`: it moves back by cost / weight."""
        self.floor = max(self.floor, self.vtime[key])
        self.vtime[key] += cost / weight
        if key in self.active:
            heapq.heappush(self._heap, (self.vtime[key], next(self._order), key))

    def adjust(self, key: K, cost: float, weight: float) -> None:
        """Correct an earlier charge (actual tokens known); affects the key's next turn, not its current one."""
        if key not in self.vtime:
            return
        self.vtime[key] = max(self.floor, self.vtime[key] + cost / weight)
        if key in self.active:
            heapq.heappush(self._heap, (self.vtime[key], next(self._order), key))

    def deactivate(self, key: K) -> None:
        self.active.discard(key)
        if self.vtime.get(key, 0.0) <= self.floor:
            self.vtime.pop(key, None)  # nothing owed: forget it (a returning key starts at the floor anyway)


class _Workload:
    def __init__(self) -> None:
        self.flows: dict[FlowKey, list[int]] = {}  # flow → heap of stream sequences
        self.live: dict[FlowKey, int] = {}  # flow → waiting requests not yet removed
        self.last_seq: dict[FlowKey, int] = {}  # flow → newest stream sequence pushed
        self.level: StrideLevel[FlowKey] = StrideLevel()
        self.priorities: Counter[int] = Counter()  # priorities of the active flows (for the min share)

    def head(self, flow: FlowKey, requests: dict[int, WaitingRequest]) -> WaitingRequest:
        seqs = self.flows[flow]
        while seqs[0] not in requests:
            heapq.heappop(seqs)  # removed lazily
        return requests[seqs[0]]


class WfqQueue:
    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        default_weight: float = 1.0,
        estimate: Callable[[WaitingRequest], int] | None = None,
        min_share: float = 0.0,
    ) -> None:
        self.weights = dict(weights or {})
        self.default_weight = default_weight
        self.min_share = min_share
        # Cost of a request without `Iris-Tokens`, asked at the moment it is charged, so the estimate is
        # as fresh as what the broker has learned by then.
        self.estimate = estimate or (lambda request: request.prompt_tokens_est + DEFAULT_COST_TOKENS)
        self._requests: dict[int, WaitingRequest] = {}
        self._workloads: dict[str, _Workload] = {}
        self._level: StrideLevel[str] = StrideLevel()
        self._tally = Tally()

    def weight(self, workload: str) -> float:
        return self.weights.get(workload, self.default_weight)

    def workload_weight(self, workload: str) -> float:
        """The configured weight, raised to the minimum share of the heaviest active workload's."""
        weight = self.weight(workload)
        if self.min_share and self._level.active:
            weight = max(weight, self.min_share * max(self.weight(w) for w in self._level.active))
        return weight

    def flow_weight(self, workload: _Workload, priority: int) -> float:
        """The flow's priority, raised to the minimum share of the highest active priority's."""
        if self.min_share and workload.priorities:
            return max(float(priority), self.min_share * max(workload.priorities))
        return float(priority)

    def cost(self, request: WaitingRequest) -> int:
        return request.cost_tokens or self.estimate(request)

    def push(self, request: WaitingRequest) -> None:
        self._requests[request.stream_seq] = request
        workload = self._workloads.setdefault(request.workload, _Workload())
        flow = (request.user, request.priority)
        heapq.heappush(workload.flows.setdefault(flow, []), request.stream_seq)
        workload.live[flow] = workload.live.get(flow, 0) + 1
        workload.last_seq[flow] = max(workload.last_seq.get(flow, 0), request.stream_seq)
        if flow not in workload.level.active:
            workload.priorities[request.priority] += 1
        workload.level.activate(flow)
        self._level.activate(request.workload)
        self._tally.add(request, 1)

    def pop(self, eligible: Eligible | None = None) -> WaitingRequest | None:
        if eligible is None:
            name = self._level.peek()
            flow = None if name is None else self._workloads[name].level.peek()
        else:
            name, flow = self._peek_eligible(eligible)
        if name is None or flow is None:
            return None
        workload = self._workloads[name]
        request = self._take_head(workload, flow)
        cost = self.cost(request)
        workload.level.charge(flow, cost, self.flow_weight(workload, flow[1]))
        self._level.charge(name, cost, self.workload_weight(name))
        self._settle(name, workload, flow)
        self._tally.add(request, -1)
        return request

    def _peek_eligible(self, eligible: Eligible) -> tuple[str | None, FlowKey | None]:
        if self._tally.none_eligible(eligible, len(self._requests)):
            return None, None
        flows: dict[str, FlowKey] = {}

        def has_eligible_flow(name: str) -> bool:
            if not eligible.workload_ok(name):
                return False
            workload = self._workloads[name]
            flow = workload.level.peek_where(lambda f: eligible.request_ok(workload.head(f, self._requests)))
            if flow is not None:
                flows[name] = flow
            return flow is not None

        name = self._level.peek_where(has_eligible_flow)
        return name, None if name is None else flows[name]

    def _take_head(self, workload: _Workload, flow: FlowKey) -> WaitingRequest:
        seqs = workload.flows[flow]
        while True:
            request = self._requests.pop(heapq.heappop(seqs), None)
            if request is not None:
                workload.live[flow] -= 1
                return request

    def _settle(self, name: str, workload: _Workload, flow: FlowKey) -> None:
        """Deactivate a flow with nothing left, and a workload with no active flow."""
        if workload.live.get(flow, 0) == 0:
            workload.priorities[flow[1]] -= 1
            if not workload.priorities[flow[1]]:
                del workload.priorities[flow[1]]
            workload.level.deactivate(flow)
            workload.flows.pop(flow, None)
            workload.live.pop(flow, None)
            workload.last_seq.pop(flow, None)
        if not workload.level.active:
            self._level.deactivate(name)
            if not workload.level.vtime:
                del self._workloads[name]

    def get(self, stream_seq: int) -> WaitingRequest | None:
        return self._requests.get(stream_seq)

    def remove(self, stream_seq: int) -> WaitingRequest | None:
        request = self._requests.pop(stream_seq, None)
        if request is None:
            return None
        workload = self._workloads[request.workload]
        flow = (request.user, request.priority)
        workload.live[flow] -= 1
        self._settle(request.workload, workload, flow)
        self._tally.add(request, -1)
        return request

    def position(self, stream_seq: int) -> int:
        """An estimate of how many requests start before this one: those ahead of it in its flow,
        scaled by the flow's share of the model while the active flows stay as they are."""
        request = self._requests[stream_seq]
        workload = self._workloads[request.workload]
        flow = (request.user, request.priority)
        if workload.last_seq[flow] == stream_seq:
            ahead = workload.live[flow] - 1  # the common case, a new arrival: O(1) even behind a flood
        else:
            ahead = sum(1 for seq in workload.flows[flow] if seq < stream_seq and seq in self._requests)
        active_weight = sum(self.workload_weight(w) for w in self._level.active)
        flows_weight = sum(self.flow_weight(workload, f[1]) for f in workload.level.active)
        flow_share = self.flow_weight(workload, flow[1]) / flows_weight
        share = self.workload_weight(request.workload) / active_weight * flow_share
        return min(len(self._requests) - 1, int(ahead / share))

    def charge_back(self, workload: str, user: str, priority: int, delta_tokens: int) -> None:
        self._level.adjust(workload, delta_tokens, self.workload_weight(workload))
        entry = self._workloads.get(workload)
        if entry is not None:
            entry.level.adjust((user, priority), delta_tokens, self.flow_weight(entry, priority))

    def count(self, workload: str) -> int:
        return self._tally.per_workload[workload]

    def count_user(self, user: str) -> int:
        return self._tally.per_user[user]

    def tickets(self) -> int:
        return self._tally.tickets

    def __len__(self) -> int:
        return len(self._requests)

    def __contains__(self, stream_seq: object) -> bool:
        return stream_seq in self._requests
