"""Weighted fair queuing: the `RequestQueue` that decides whose request runs next.

Two levels of stride scheduling over virtual time. Workloads share a model by their configured weight;
inside a workload, flows `(user, priority)` share it by priority, so users at equal priority get equal
shares however many requests each sends, and priority 5 gets 5x the share of priority 1. Each workload
and flow keeps a virtual time = cost served / weight, where cost is the request's tokens; `pop` takes the
smallest at each level and charges it. A workload or flow that becomes active starts at the smallest
virtual time among those already active: idle time banks no credit, and a newcomer is served at once
however deep the others' backlog is. Inside a flow, requests keep stream order. Every operation is
O(log n); removal is lazy.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Hashable, Mapping
from typing import Generic, TypeVar

from broker.queue import WaitingRequest

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


class WfqQueue:
    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        default_weight: float = 1.0,
        estimate: Callable[[WaitingRequest], int] | None = None,
    ) -> None:
        self.weights = dict(weights or {})
        self.default_weight = default_weight
        # Cost of a request without `Iris-Tokens`, asked at the moment it is charged, so the estimate is
        # as fresh as what the broker has learned by then.
        self.estimate = estimate or (lambda request: request.prompt_tokens_est + DEFAULT_COST_TOKENS)
        self._requests: dict[int, WaitingRequest] = {}
        self._workloads: dict[str, _Workload] = {}
        self._level: StrideLevel[str] = StrideLevel()

    def weight(self, workload: str) -> float:
        return self.weights.get(workload, self.default_weight)

    def cost(self, request: WaitingRequest) -> int:
        return request.cost_tokens or self.estimate(request)

    def push(self, request: WaitingRequest) -> None:
        self._requests[request.stream_seq] = request
        workload = self._workloads.setdefault(request.workload, _Workload())
        flow = (request.user, request.priority)
        heapq.heappush(workload.flows.setdefault(flow, []), request.stream_seq)
        workload.live[flow] = workload.live.get(flow, 0) + 1
        workload.last_seq[flow] = max(workload.last_seq.get(flow, 0), request.stream_seq)
        workload.level.activate(flow)
        self._level.activate(request.workload)

    def pop(self) -> WaitingRequest | None:
        name = self._level.peek()
        if name is None:
            return None
        workload = self._workloads[name]
        flow = workload.level.peek()
        assert flow is not None, "an active workload has an active flow"
        request = self._take_head(workload, flow)
        cost = self.cost(request)
        workload.level.charge(flow, cost, flow[1])
        self._level.charge(name, cost, self.weight(name))
        self._settle(name, workload, flow)
        return request

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
            workload.level.deactivate(flow)
            workload.flows.pop(flow, None)
            workload.live.pop(flow, None)
            workload.last_seq.pop(flow, None)
        if not workload.level.active:
            self._level.deactivate(name)
            if not workload.level.vtime:
                del self._workloads[name]

    def remove(self, stream_seq: int) -> WaitingRequest | None:
        request = self._requests.pop(stream_seq, None)
        if request is None:
            return None
        workload = self._workloads[request.workload]
        flow = (request.user, request.priority)
        workload.live[flow] -= 1
        self._settle(request.workload, workload, flow)
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
        active_weight = sum(self.weight(w) for w in self._level.active)
        flow_priority = sum(f[1] for f in workload.level.active)
        share = self.weight(request.workload) / active_weight * request.priority / flow_priority
        return min(len(self._requests) - 1, int(ahead / share))

    def charge_back(self, workload: str, user: str, priority: int, delta_tokens: int) -> None:
        self._level.adjust(workload, delta_tokens, self.weight(workload))
        entry = self._workloads.get(workload)
        if entry is not None:
            entry.level.adjust((user, priority), delta_tokens, priority)

    def count(self, workload: str) -> int:
        entry = self._workloads.get(workload)
        return sum(entry.live.values()) if entry else 0

    def __len__(self) -> int:
        return len(self._requests)

    def __contains__(self, stream_seq: object) -> bool:
        return stream_seq in self._requests
