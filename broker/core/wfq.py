"""Weighted fair queuing: the `RequestQueue` that decides whose request runs next (`priority_mode = "share"`).

A tree of stride levels (`broker.core.stride`): workloads share a model, users share their workload, end users
(`Iris-End-User`, what an API key's callers name as OpenAI's `user`) share their user. Each turn serves the
request at the head of the chosen end user's flow (highest priority first, then stream order) and charges
its cost in tokens along the path:

    workload  += cost / (workload weight × priority served)
    user      += cost / priority served
    end user  += cost / priority served

So while backlogged a workload's share is its configured weight times the priority it is serving, across
workloads as inside them (the reference labels alone, priority 5 vs 1 in two workloads, give 5:1), users of
one workload at equal priority split it equally, and a user's share never grows by spreading requests over
priorities (one flow, weighted by the priority it is served at) or over end users (they split the user's
share). Minimum share (`min_share`, 0 = off): at each level a weight is raised to at least `min_share` times
the heaviest active one there (weight × highest waiting priority), so nobody starves. `pop(eligible)` skips
what may not start now without charging it, so it keeps its turn. State is bounded by what is waiting:
a subtree with nothing waiting is dropped, and idle keys are forgotten once they owe nothing.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping
from typing import Protocol

from broker.core.queue import Eligible, TalliedQueue, Tally, WaitingRequest, default_estimate
from broker.core.stride import StrideLevel

BYTES_PER_PROMPT_TOKEN = 4
DEPTH = 3  # workload, user, end user
Path = tuple[str, str, str]


class Labels(Protocol):
    """What places a request in the tree (a `WaitingRequest` or a `Lease`)."""

    @property
    def workload(self) -> str: ...
    @property
    def user(self) -> str: ...
    @property
    def end_user(self) -> str: ...
    @property
    def priority(self) -> int: ...


def estimate_prompt_tokens(body_bytes: int) -> int:
    """Prompt tokens from the body size the headers-only consumer sees (`Nats-Msg-Size`)."""
    return max(1, body_bytes // BYTES_PER_PROMPT_TOKEN)


def path_of(request: Labels) -> Path:
    return (request.workload, request.user, request.end_user)


class _Node:
    """A workload, user or end user: its children take turns by `level`; `priorities` counts the requests
    waiting below it by priority. A leaf (an end user) holds its flow: (-priority, stream_seq), lazily pruned."""

    __slots__ = ("children", "cost", "level", "newest_seq", "priorities", "seqs", "waiting")

    def __init__(self) -> None:
        self.level: StrideLevel[str] = StrideLevel()
        self.children: dict[str, _Node] = {}
        self.priorities: dict[int, int] = {}
        self.seqs: list[tuple[int, int]] = []
        self.waiting = 0
        self.cost = 0  # tokens waiting below, as estimated when each was pushed
        self.newest_seq = 0

    def top_priority(self) -> int:
        return max(self.priorities) if self.priorities else 1

    def count(self, priority: int, delta: int, cost: int) -> None:
        self.waiting += delta
        self.cost += delta * cost
        left = self.priorities.get(priority, 0) + delta
        if left:
            self.priorities[priority] = left
        else:
            del self.priorities[priority]


class WfqQueue(TalliedQueue):
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
        self.estimate = estimate or default_estimate
        self._requests: dict[int, WaitingRequest] = {}
        self._costs: dict[int, int] = {}  # stream sequence → its cost when pushed (what the sums hold)
        self._root = _Node()
        self._tally = Tally()

    def weight(self, workload: str) -> float:
        return self.weights.get(workload, self.default_weight)

    def cost(self, request: WaitingRequest) -> int:
        return request.cost_tokens or self.estimate(request)

    def _weight(self, parent: _Node, depth: int, key: str, priority: int) -> float:
        """A child's weight when it serves at `priority`, raised to the level's minimum share."""
        weight = (self.weight(key) if depth == 0 else 1.0) * priority
        if self.min_share:
            weight = max(weight, self.min_share * self._heaviest(parent, depth))
        return weight

    def _heaviest(self, parent: _Node, depth: int) -> float:
        if depth:  # users and end users weigh their highest waiting priority: the parent's own
            return float(parent.top_priority())
        active = parent.level.active
        return max((self.weight(k) * parent.children[k].top_priority() for k in active), default=0.0)

    def _nodes(self, path: Path) -> list[_Node]:
        nodes = [self._root]
        for key in path:
            nodes.append(nodes[-1].children[key])
        return nodes

    def push(self, request: WaitingRequest) -> None:
        self._requests[request.stream_seq] = request
        cost = self._costs[request.stream_seq] = self.cost(request)
        self._root.cost += cost
        path = path_of(request)
        node = self._root
        for key in path:
            child = node.children.get(key)
            if child is None:
                child = node.children[key] = _Node()
            node.level.activate(key)
            child.count(request.priority, 1, cost)
            node = child
        heapq.heappush(node.seqs, (-request.priority, request.stream_seq))
        node.newest_seq = max(node.newest_seq, request.stream_seq)
        self._tally.add(request, 1)

    def pop(self, eligible: Eligible | None = None) -> WaitingRequest | None:
        path = self._best_path(eligible)
        if path is None:
            return None
        nodes = self._nodes(path)
        request = self._take_head(nodes[-1])
        cost = self.cost(request)
        for depth, key in enumerate(path):
            nodes[depth].level.charge(key, cost, self._weight(nodes[depth], depth, key, request.priority))
        self._unlink(request, path, nodes)
        return request

    def has_eligible(self, eligible: Eligible | None) -> bool:
        return self._best_path(eligible) is not None

    def _best_path(self, eligible: Eligible | None) -> Path | None:
        if eligible is None:
            keys: list[str] = []
            node = self._root
            for _ in range(DEPTH):
                key = node.level.peek()
                if key is None:
                    return None
                keys.append(key)
                node = node.children[key]
            return (keys[0], keys[1], keys[2])
        if self._tally.none_eligible(eligible, len(self._requests)):
            return None
        found: list[str] = []  # filled bottom-up as the search returns

        def search(node: _Node, depth: int, weight: float) -> bool:
            if depth == DEPTH:
                return eligible.request_ok(self._head(node))  # the head: the leaf's highest priority

            def ok(key: str) -> bool:
                if depth == 0 and not eligible.workload_ok(key):
                    return False
                child, child_weight = node.children[key], self.weight(key) if depth == 0 else weight
                if child_weight * child.top_priority() < eligible.min_rank:
                    return False  # nothing below ranks high enough (rank: workload weight x priority)
                if search(child, depth + 1, child_weight):
                    found.append(key)
                    return True
                return False

            return node.level.peek_where(ok) is not None

        return (found[2], found[1], found[0]) if search(self._root, 0, 1.0) else None

    def _head(self, leaf: _Node) -> WaitingRequest:
        seqs = leaf.seqs
        while seqs[0][1] not in self._requests:
            heapq.heappop(seqs)  # removed lazily
        return self._requests[seqs[0][1]]

    def _take_head(self, leaf: _Node) -> WaitingRequest:
        request = self._head(leaf)
        heapq.heappop(leaf.seqs)
        del self._requests[request.stream_seq]
        return request

    def _unlink(self, request: WaitingRequest, path: Path, nodes: list[_Node]) -> None:
        """Count the request out; a subtree with nothing waiting leaves the tree (it banks no credit)."""
        cost = self._costs.pop(request.stream_seq)
        self._root.cost -= cost
        for node in nodes[1:]:
            node.count(request.priority, -1, cost)
        for depth in range(DEPTH - 1, -1, -1):
            child = nodes[depth + 1]
            if child.waiting:
                break
            nodes[depth].level.deactivate(path[depth])
            del nodes[depth].children[path[depth]]
        leaf = nodes[-1]
        if leaf.waiting and len(leaf.seqs) > 2 * leaf.waiting + 64:
            leaf.seqs = [entry for entry in leaf.seqs if entry[1] in self._requests]
            heapq.heapify(leaf.seqs)
        self._tally.add(request, -1)

    def get(self, stream_seq: int) -> WaitingRequest | None:
        return self._requests.get(stream_seq)

    def remove(self, stream_seq: int) -> WaitingRequest | None:
        request = self._requests.pop(stream_seq, None)
        if request is None:
            return None
        path = path_of(request)
        self._unlink(request, path, self._nodes(path))
        return request

    def position(self, stream_seq: int) -> int:
        """An estimate of how many requests start before this one: those ahead of it in its flow, scaled
        by the flow's share of the model while the active keys stay as they are."""
        request, leaf, share = self._flow_share(stream_seq)
        return min(len(self._requests) - 1, int(self._ahead_in_flow(leaf, request) / share))

    def work_ahead(self, stream_seq: int) -> float:
        """Tokens that start before this request under the fair order: those ahead of it in its flow,
        scaled by the flow's share while the active keys stay as they are, and never more than all that
        waits besides it."""
        request, leaf, share = self._flow_share(stream_seq)
        own = self._costs[stream_seq]
        return min(self._root.cost - own, self._cost_ahead_in_flow(leaf, request) / share)

    def _flow_share(self, stream_seq: int) -> tuple[WaitingRequest, _Node, float]:
        """A waiting request, its flow, and the flow's share of the model while the active keys stay."""
        request = self._requests[stream_seq]
        path = path_of(request)
        nodes = self._nodes(path)
        share = 1.0
        for depth, key in enumerate(path):
            share *= self._share(nodes[depth], depth, key)
        return request, nodes[-1], share

    def _cost_ahead_in_flow(self, leaf: _Node, request: WaitingRequest) -> int:
        if leaf.newest_seq == request.stream_seq and request.priority == min(leaf.priorities):
            return leaf.cost - self._costs[request.stream_seq]
        mine = (-request.priority, request.stream_seq)
        return sum(self._costs[seq] for entry in leaf.seqs if entry < mine and (seq := entry[1]) in self._costs)

    def _share(self, parent: _Node, depth: int, key: str) -> float:
        def weight(k: str) -> float:
            return self._weight(parent, depth, k, parent.children[k].top_priority())

        return weight(key) / sum(weight(k) for k in parent.level.active)

    def _ahead_in_flow(self, leaf: _Node, request: WaitingRequest) -> int:
        if leaf.newest_seq == request.stream_seq and request.priority == min(leaf.priorities):
            return leaf.waiting - 1  # the common case, a new arrival: O(1) even behind a flood
        mine = (-request.priority, request.stream_seq)
        return sum(1 for entry in leaf.seqs if entry < mine and entry[1] in self._requests)

    def charge_back(self, labels: Labels, delta_tokens: int) -> None:
        node = self._root
        for depth, key in enumerate(path_of(labels)):
            node.level.adjust(key, delta_tokens, self._weight(node, depth, key, labels.priority))
            child = node.children.get(key)
            if child is None:
                return  # nothing of it waits: forgotten, it owes nothing
            node = child

    def cost_of(self, stream_seq: int) -> int:
        return self._costs[stream_seq]

    def waiting_cost(self) -> int:
        return self._root.cost

    def remembered(self) -> int:
        """Keys held anywhere in the tree (active or still owing): what bounded state is measured by."""

        def count(node: _Node) -> int:
            return len(node.level) + sum(count(child) for child in node.children.values())

        return count(self._root)

    def top_priority(self, workload: str) -> int:
        node = self._root.children.get(workload)
        return 1 if node is None else node.top_priority()

    def top_rank(self) -> float:
        children = self._root.children.items()
        return max((self.weight(k) * c.top_priority() for k, c in children if c.waiting), default=0.0)

    def __len__(self) -> int:
        return len(self._requests)

    def __contains__(self, stream_seq: object) -> bool:
        return stream_seq in self._requests
