"""Priority preemption: who gives up a running slot to a waiting request, and when it gets it back.

Ranks come from the priority formula: under `priority_mode = "share"` a request weighs its workload's
weight × its priority (the divisor of its flow's charge, so what its share is proportional to); under
"strict" its priority band. When a model has nothing free (no capacity, or no worker slot), a waiting
request whose rank is at least `preempt_ratio` × that of a running lease (the lowest-ranked one first;
of equal ones, the one started last, which has the least work to keep) has that lease suspended by its
worker, and the freed slot goes to the best waiting request that the top one would not suspend in turn
(the queue's next may be another low one: under shares a high flow that starts waiting ties with a
backlogged low flow, or still owes for its last turn); if none of those can start, to the queue's next.
So does every free slot while `min_share` is 0: nothing starts that would be suspended at once (with a
minimum share, slots a lease ended go by the queue's order, so its bound holds). Guards: a lease runs
`preempt_min_run_ms` (since it started or last resumed) before it may be suspended, a request is suspended at most
`preempt_max_per_request` times, a worker holds at most the `max_suspended` its heartbeat announces, and one
suspension per model is in flight at a time. A suspended lease still belongs to its worker (its heartbeat
lists it) but holds no slot; it is resumed on that worker, oldest first and before new requests start,
as soon as the worker has a free slot and nothing waiting outranks it by the ratio, which `min_share`
bounds: the low bands are still dispatched, and a request resumed past its cap runs to the end.
Pure state and decisions; the scheduler calls in, the shell carries the orders out.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from broker.core.limits import ModelLimits
from broker.core.pool import ModelPool
from broker.core.workers import WorkerState
from schemas.messages import Heartbeat, Lease


def rank(limits: ModelLimits, weights: Mapping[str, float], workload: str, priority: int) -> float:
    if limits.priority_mode == "strict":
        return float(priority)
    return weights.get(workload, 1.0) * priority


@dataclass
class PreemptionBook:
    suspending: set[int] = field(default_factory=set)  # suspend ordered, not yet answered
    resuming: dict[int, int] = field(default_factory=dict)  # resume ordered, not yet answered → suspended since
    resumed_ms: dict[int, int] = field(default_factory=dict)  # last resumed (its min run time restarts)
    times: Counter[int] = field(default_factory=Counter)  # suspensions per request
    freed: Counter[str] = field(default_factory=Counter)  # model → slots suspensions freed, not handed out

    def forget(self, pool: ModelPool, lease: Lease) -> None:
        """The lease ended or was lost: no trace of its suspension stays."""
        seq = lease.stream_seq
        pool.suspended.pop(seq, None)
        worker = pool.workers.get(lease.worker_id)
        if worker is not None:
            pool.workers.unsuspend(worker, seq)
        self.suspending.discard(seq)
        self.resuming.pop(seq, None)
        self.resumed_ms.pop(seq, None)
        self.times.pop(seq, None)


def _no_slot(pool: ModelPool, limits: ModelLimits) -> bool:
    return pool.capacity(limits.max_concurrency) <= 0 or pool.workers.free_slots <= 0


def victim(
    pool: ModelPool,
    limits: ModelLimits,
    book: PreemptionBook,
    rank_of: Callable[[str, int], float],
    top_waiting: float,
    now_ms: int,
) -> Lease | None:
    """The running lease to suspend now for the best waiting request, if any may be."""
    if limits.preempt_ratio <= 0 or not len(pool.queue) or not _no_slot(pool, limits):
        return None
    if any(seq in pool.leases for seq in book.suspending):
        return None  # one at a time per model: its slot is handed out before the next is judged
    best: tuple[tuple[float, int, int], Lease] | None = None
    for seq, lease in pool.leases.items():
        if lease.ticket or seq in pool.suspended or seq in book.resuming:
            continue
        worker = pool.workers.get(lease.worker_id)
        if worker is None or worker.draining or len(worker.suspended) >= worker.max_suspended:
            continue
        if now_ms - book.resumed_ms.get(seq, lease.leased_ms) < limits.preempt_min_run_ms:
            continue
        if book.times[seq] >= limits.preempt_max_per_request:
            continue
        lease_rank = rank_of(lease.workload, lease.priority)
        if top_waiting < limits.preempt_ratio * lease_rank:
            continue
        key = (lease_rank, -lease.leased_ms, -seq)  # lowest rank, then the one started last
        if best is None or key < best[0]:
            best = (key, lease)
    if best is None:
        return None
    book.suspending.add(best[1].stream_seq)
    return best[1]


def resumes_due(
    pool: ModelPool,
    limits: ModelLimits,
    book: PreemptionBook,
    rank_of: Callable[[str, int], float],
    top_waiting: float,
) -> list[Lease]:
    """Suspended leases to resume now on their own workers, oldest suspension first; each counts against
    capacity and its worker's slots again from here on."""
    resumed: list[Lease] = []
    for seq, since_ms in sorted(pool.suspended.items(), key=lambda item: item[1]):
        lease = pool.leases.get(seq)
        worker = pool.workers.get(lease.worker_id) if lease is not None else None
        if lease is None or worker is None or worker.free_slots <= 0:
            continue
        if pool.capacity(limits.max_concurrency) <= 0:
            break
        if len(pool.queue) and top_waiting >= limits.preempt_ratio * rank_of(lease.workload, lease.priority) > 0:
            continue  # it would be suspended again at once
        del pool.suspended[seq]
        pool.workers.unsuspend(worker, seq)
        book.resuming[seq] = since_ms
        resumed.append(lease)
    return resumed


def suspend_answered(
    pool: ModelPool, book: PreemptionBook, asked: Iterable[int], suspended: Iterable[int], now_ms: int
) -> None:
    """The worker's answer (none: it did not answer in time; its heartbeats then tell, see `reconcile`)."""
    done = set(suspended)
    for seq in asked:
        book.suspending.discard(seq)
        lease = pool.leases.get(seq)
        worker = pool.workers.get(lease.worker_id) if lease is not None else None
        if seq in done and worker is not None:
            pool.suspended[seq] = now_ms
            pool.workers.suspend(worker, seq)
            book.times[seq] += 1
            book.freed[pool.model] += 1


def resume_answered(
    pool: ModelPool, book: PreemptionBook, resumed: Iterable[int], refused: Iterable[int], now_ms: int
) -> None:
    for seq in resumed:
        if book.resuming.pop(seq, None) is not None:
            book.resumed_ms[seq] = now_ms
    for seq in refused:  # no slot there after all: it waits suspended for the next round
        since_ms = book.resuming.pop(seq, None)
        lease = pool.leases.get(seq)
        worker = pool.workers.get(lease.worker_id) if lease is not None else None
        if since_ms is not None and worker is not None:
            pool.suspended[seq] = since_ms
            pool.workers.suspend(worker, seq)


def reconcile(
    pool: ModelPool, book: PreemptionBook, worker: WorkerState, beat: Heartbeat, now_ms: int, confirm_ms: int
) -> None:
    """What the worker's heartbeat says is suspended wins once no order of ours is in flight for it and
    the last one is older than `confirm_ms` (a beat sent before an answer may be stale): a new term learns
    the suspended leases it adopted, and one a draining worker resumed by itself counts again."""
    worker.max_suspended = beat.max_suspended
    listed = set(beat.suspended)
    settled = [
        seq
        for seq in worker.leases
        if seq not in book.suspending
        and seq not in book.resuming
        and now_ms - max(book.resumed_ms.get(seq, 0), pool.suspended.get(seq, 0)) > confirm_ms
    ]
    for seq in settled:
        if seq in listed and seq not in pool.suspended:
            pool.suspended[seq] = now_ms
            pool.workers.suspend(worker, seq)
        elif seq not in listed and seq in pool.suspended:
            del pool.suspended[seq]
            pool.workers.unsuspend(worker, seq)


class Preemption:
    """The scheduler's handle on all of the above: one book, the decisions of a round, the answers."""

    def __init__(self) -> None:
        self.book = PreemptionBook()

    def resumes(self, pool: ModelPool, limits: ModelLimits, weights: Mapping[str, float]) -> list[Lease]:
        top = pool.queue.top_rank() if len(pool.queue) else 0.0
        return resumes_due(pool, limits, self.book, _ranker(limits, weights), top)

    def suspends(self, pool: ModelPool, limits: ModelLimits, weights: Mapping[str, float], now_ms: int) -> list[Lease]:
        if limits.preempt_ratio <= 0 or not len(pool.queue):
            return []
        lease = victim(pool, limits, self.book, _ranker(limits, weights), pool.queue.top_rank(), now_ms)
        return [] if lease is None else [lease]

    def start_floor(self, pool: ModelPool, limits: ModelLimits, weights: Mapping[str, float]) -> float:
        """The rank a request needs to start in the pool's next free slot: above what the best waiting one
        would suspend (0: any). Only for a slot a suspension freed while `min_share` is on."""
        if limits.preempt_ratio <= 0 or not len(pool.queue):
            self.book.freed.pop(pool.model, None)
            return 0.0
        if limits.min_share and not self.book.freed[pool.model]:
            return 0.0
        floor = pool.queue.top_rank() / limits.preempt_ratio
        lowest = 1.0 if limits.priority_mode == "strict" else min([1.0, *weights.values()])  # priorities >= 1
        return math.nextafter(floor, math.inf) if floor >= lowest else 0.0

    def slot_handed_out(self, pool: ModelPool) -> None:
        """A request started: in a slot a suspension freed, if one is still counted."""
        left = self.book.freed.pop(pool.model, 0) - 1
        if left > 0:
            self.book.freed[pool.model] = left

    def suspend_answered(self, pool: ModelPool, asked: Iterable[int], suspended: Iterable[int], now_ms: int) -> None:
        suspend_answered(pool, self.book, asked, suspended, now_ms)

    def resume_answered(self, pool: ModelPool, resumed: Iterable[int], refused: Iterable[int], now_ms: int) -> None:
        resume_answered(pool, self.book, resumed, refused, now_ms)

    def reconcile(self, pool: ModelPool, worker: WorkerState, beat: Heartbeat, now_ms: int, confirm_ms: int) -> None:
        reconcile(pool, self.book, worker, beat, now_ms, confirm_ms)


def _ranker(limits: ModelLimits, weights: Mapping[str, float]) -> Callable[[str, int], float]:
    return lambda workload, priority: rank(limits, weights, workload, priority)
