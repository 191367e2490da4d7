"""A model's workers, indexed so that no decision walks the fleet: every move here is O(1) (O(log W) for a
heartbeat) in the number of workers W.

Kept current on each heartbeat, lease, lease end, refusal and removal: the workers by free slots (one bucket
per count, first come first served inside one, so a round spreads its leases over the emptiest workers), by
when they were last heard (a lazy heap: the silent ones come out first), the stream sequences their last
heartbeats list as running (what a request found in the stream is looked up in), and the totals the
limits and rounds ask for (live slots, free slots, workers with a free slot, leases on draining workers; a
suspended lease holds no slot). Only the moves below change a worker, so the indexes always agree with a
recount (`tests/unit/broker/test_worker_index.py`).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterator, Mapping, ValuesView
from dataclasses import dataclass, field


@dataclass
class WorkerState:
    worker_id: str
    model: str
    slots: int
    last_seen_ms: int
    leases: set[int] = field(default_factory=set)
    refusing: bool = False  # refused an offer; no more offers until its next heartbeat
    draining: bool = False
    reported: frozenset[int] = frozenset()  # what its last heartbeat listed as running
    suspended: set[int] = field(default_factory=set)  # those of its leases held suspended: they hold no slot
    max_suspended: int = 0  # how many it may hold (its heartbeat says)

    @property
    def free_slots(self) -> int:
        if self.refusing or self.draining:
            return 0
        return max(0, self.slots - len(self.leases) + len(self.suspended))

    @property
    def active_leases(self) -> int:
        """Leases that hold one of its slots (not suspended)."""
        return len(self.leases) - len(self.suspended)


class WorkerBook(Mapping[str, WorkerState]):
    """Read like a dict of worker id → `WorkerState`; change only through the methods below."""

    def __init__(self) -> None:
        self._workers: dict[str, WorkerState] = {}
        self._by_free: dict[int, OrderedDict[str, None]] = {}  # free slots (> 0) → workers with that many
        self._most_free = 0  # no bucket above this one holds a worker
        self._heard: list[tuple[int, str]] = []  # (last_seen_ms, worker id), lazy: stale entries skipped
        self._runner: dict[int, str] = {}  # stream sequence → a worker whose last heartbeat lists it
        self._other_runners: dict[int, set[str]] = {}  # the rare sequence more than one worker lists
        self.live_slots = 0  # slots of the workers that are not draining
        self.free_slots = 0  # free slots over all workers
        self.free_workers = 0  # workers with a free slot
        self.draining_leases = 0  # leases held by draining workers, suspended ones aside

    # --- read --------------------------------------------------------------------------------------

    def __getitem__(self, worker_id: str) -> WorkerState:
        return self._workers[worker_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._workers)

    def __len__(self) -> int:
        return len(self._workers)

    def values(self) -> ValuesView[WorkerState]:
        return self._workers.values()

    def most_free(self) -> WorkerState | None:
        """A worker with the most free slots, None when none has one."""
        while self._most_free > 0:
            bucket = self._by_free.get(self._most_free)
            if bucket:
                return self._workers[next(iter(bucket))]
            self._by_free.pop(self._most_free, None)
            self._most_free -= 1
        return None

    def runner_of(self, stream_seq: int) -> WorkerState | None:
        """A worker whose last heartbeat lists the request as running."""
        worker_id = self._runner.get(stream_seq)
        return None if worker_id is None else self._workers[worker_id]

    # --- change ------------------------------------------------------------------------------------

    def remove_silent(self, cutoff_ms: int) -> list[WorkerState]:
        """Forget the workers last heard before `cutoff_ms`, and return them, oldest first."""
        silent: dict[str, WorkerState] = {}
        while self._heard and self._heard[0][0] < cutoff_ms:
            seen_ms, worker_id = heapq.heappop(self._heard)
            worker = self._workers.get(worker_id)
            if worker is not None and worker.last_seen_ms == seen_ms:
                silent[worker_id] = worker
        for worker_id in silent:
            self.remove(worker_id)
        return list(silent.values())

    def add(self, worker_id: str, model: str, slots: int, now_ms: int) -> WorkerState:
        worker = self._workers[worker_id] = WorkerState(worker_id, model, slots, now_ms)
        self._attach(worker)
        heapq.heappush(self._heard, (now_ms, worker_id))
        return worker

    def remove(self, worker_id: str) -> WorkerState | None:
        worker = self._workers.get(worker_id)
        if worker is None:
            return None
        self._detach(worker)
        self._list(worker, frozenset())
        del self._workers[worker_id]
        self._compact_heard()
        return worker

    def beat(self, worker: WorkerState, slots: int, draining: bool, running: frozenset[int], now_ms: int) -> None:
        """Its heartbeat: slots, draining, what it runs; it takes offers again."""
        self._detach(worker)
        worker.slots, worker.draining, worker.refusing = slots, draining, False
        self._attach(worker)
        self._list(worker, running)
        if worker.last_seen_ms != now_ms:
            worker.last_seen_ms = now_ms
            heapq.heappush(self._heard, (now_ms, worker.worker_id))
            self._compact_heard()

    def lease(self, worker: WorkerState, stream_seq: int) -> None:
        self._detach(worker)
        worker.leases.add(stream_seq)
        self._attach(worker)

    def release(self, worker: WorkerState, stream_seq: int) -> None:
        self._detach(worker)
        worker.leases.discard(stream_seq)
        worker.suspended.discard(stream_seq)
        self._attach(worker)

    def suspend(self, worker: WorkerState, stream_seq: int) -> None:
        """Its lease is held suspended: its slot is free."""
        self._detach(worker)
        worker.suspended.add(stream_seq)
        self._attach(worker)

    def unsuspend(self, worker: WorkerState, stream_seq: int) -> None:
        """Its suspended lease runs again (or ended): it holds a slot again (or none)."""
        if stream_seq in worker.suspended:
            self._detach(worker)
            worker.suspended.discard(stream_seq)
            self._attach(worker)

    def refuse(self, worker: WorkerState) -> None:
        """It refused an offer: no more until its next heartbeat."""
        self._detach(worker)
        worker.refusing = True
        self._attach(worker)

    def unlist(self, worker: WorkerState, stream_seq: int) -> None:
        """Its lease ended: its last heartbeat's list no longer counts for that request."""
        if stream_seq in worker.reported:
            self._list(worker, worker.reported - {stream_seq})

    # --- the indexes ---------------------------------------------------------------------------------

    def _detach(self, worker: WorkerState) -> None:
        free = worker.free_slots
        if free:
            self._by_free[free].pop(worker.worker_id)
            self.free_slots -= free
            self.free_workers -= 1
        if worker.draining:
            self.draining_leases -= worker.active_leases
        else:
            self.live_slots -= worker.slots

    def _attach(self, worker: WorkerState) -> None:
        free = worker.free_slots
        if free:
            bucket = self._by_free.get(free)
            if bucket is None:
                bucket = self._by_free[free] = OrderedDict()
            bucket[worker.worker_id] = None
            self.free_slots += free
            self.free_workers += 1
            self._most_free = max(self._most_free, free)
        if worker.draining:
            self.draining_leases += worker.active_leases
        else:
            self.live_slots += worker.slots

    def _list(self, worker: WorkerState, running: frozenset[int]) -> None:
        """Replace what the worker is known to run by `running`."""
        old = worker.reported
        worker.reported = running
        for seq in old - running:
            self._unlist_runner(seq, worker.worker_id)
        for seq in running - old:
            first = self._runner.setdefault(seq, worker.worker_id)
            if first != worker.worker_id:
                self._other_runners.setdefault(seq, set()).add(worker.worker_id)

    def _unlist_runner(self, seq: int, worker_id: str) -> None:
        others = self._other_runners.get(seq)
        if self._runner.get(seq) == worker_id:
            if others:
                self._runner[seq] = others.pop()
            else:
                del self._runner[seq]
        elif others is not None:
            others.discard(worker_id)
        if others is not None and not others:
            del self._other_runners[seq]

    def _compact_heard(self) -> None:
        """Drop stale entries once they outnumber the workers (each beat adds one)."""
        if len(self._heard) > 4 * len(self._workers) + 64:
            self._heard = [(w.last_seen_ms, w.worker_id) for w in self._workers.values()]
            heapq.heapify(self._heard)
