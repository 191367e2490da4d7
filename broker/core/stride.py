"""Stride scheduling over virtual time: the clock of one level of the fair queue.

Each key (a workload, a user, an end user) keeps a virtual time = service received / weight; the active
key with the smallest virtual time has the next turn, and a turn moves it back by cost / weight. A key
that becomes active starts no earlier than the level's `floor` (the virtual time of the last turn) nor
the smallest active virtual time: idle time banks no credit, and a newcomer is served at once however
deep the others' backlog is. An idle key is remembered only while it still owes, that is while its
virtual time is past the floor (a closed-loop client that was just served must not jump the queue when
it comes back a moment later); once the floor passes it, or the whole level is idle, it is forgotten.
So the state is the active keys plus those served within the current round, never the history.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class StrideLevel(Generic[K]):
    """Keys that take turns in proportion to their weights."""

    def __init__(self) -> None:
        self.vtime: dict[K, float] = {}  # active keys, and idle ones that still owe
        self.active: set[K] = set()
        self._heap: list[tuple[float, int, K]] = []  # active keys by virtual time; stale entries skipped
        self._idle: list[tuple[float, int, K]] = []  # idle keys that owe, by virtual time; stale entries skipped
        self._order = itertools.count()
        self.floor = 0.0

    def activate(self, key: K) -> None:
        if key in self.active:
            return
        self.active.add(key)
        start = max(self.vtime.get(key, self.floor), self._min_active_vtime())
        self.vtime[key] = start
        heapq.heappush(self._heap, (start, next(self._order), key))

    def deactivate(self, key: K) -> None:
        self.active.discard(key)
        if not self.active:
            self._forget_idle()
        elif self.vtime.get(key, self.floor) > self.floor:
            heapq.heappush(self._idle, (self.vtime[key], next(self._order), key))
        else:
            self.vtime.pop(key, None)

    def _forget_idle(self) -> None:
        """Nobody waits at this level: nobody is owed anything, so every key starts afresh at one floor."""
        self.floor = max(self.floor, max(self.vtime.values(), default=self.floor))
        self.vtime.clear()
        self._heap.clear()
        self._idle.clear()

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
        self._requeue(key, self.vtime[key] + cost / weight)
        self._drop_paid_up()

    def adjust(self, key: K, cost: float, weight: float) -> None:
        """Correct an earlier charge (actual tokens known); affects the key's next turn, not its current one.
        A key already forgotten owes nothing any more."""
        if key in self.vtime:
            self._requeue(key, max(self.floor, self.vtime[key] + cost / weight))

    def _requeue(self, key: K, vtime: float) -> None:
        self.vtime[key] = vtime
        if key in self.active:
            heapq.heappush(self._heap, (vtime, next(self._order), key))
        elif vtime > self.floor:
            heapq.heappush(self._idle, (vtime, next(self._order), key))
        else:
            del self.vtime[key]

    def _drop_paid_up(self) -> None:
        """Idle keys the floor has passed owe nothing: forget them."""
        while self._idle and self._idle[0][0] <= self.floor:
            vtime, _, key = heapq.heappop(self._idle)
            if key not in self.active and self.vtime.get(key) == vtime:
                del self.vtime[key]
        if len(self._idle) > 2 * len(self.vtime) + 64:  # entries left behind by keys that came back
            self._idle = [e for e in self._idle if e[2] not in self.active and self.vtime.get(e[2]) == e[0]]
            heapq.heapify(self._idle)

    def __len__(self) -> int:
        """Keys remembered (active, or idle and still owing)."""
        return len(self.vtime)
