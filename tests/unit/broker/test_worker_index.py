"""The worker index (`broker.core.workers.WorkerBook`) agrees with a from-scratch recount of the workers
after any sequence of heartbeats, leases, lease ends, refusals, departures, silent workers timing out, and
leases suspended and resumed (a suspended lease holds no slot):
free and live slot totals, leases on draining workers, the worker with the most free slots, who runs a
request found in the stream, and which workers are past their timeout."""

from __future__ import annotations

from collections.abc import Iterable

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.limits import SchedulerLimits
from broker.core.pool import ModelPool
from broker.core.scheduler import Scheduler
from broker.core.workers import WorkerBook
from schemas.messages import Heartbeat, LeaseDone
from tests.unit.builders import GRACE, T0, request

WORKERS = ("a", "b", "c", "d")
SEQS = range(1, 31)

events = st.lists(
    st.one_of(
        st.tuples(st.just("enqueue"), st.sampled_from(SEQS)),
        st.tuples(st.just("beat"), st.sampled_from(WORKERS), st.integers(0, 4), st.booleans(), st.integers(0, 3)),
        st.tuples(st.just("end"), st.sampled_from(SEQS)),
        st.tuples(st.just("refuse"), st.sampled_from(SEQS)),
        st.tuples(st.just("gone"), st.sampled_from(WORKERS)),
        st.tuples(st.just("time"), st.integers(1, 2_500)),
        st.tuples(st.just("suspended"), st.sampled_from(SEQS)),
        st.tuples(st.just("resume_refused"), st.sampled_from(SEQS)),
    ),
    max_size=150,
)


def assert_agrees_with_recount(book: WorkerBook, pool: ModelPool, max_concurrency: int) -> None:
    workers = list(book.values())
    assert book.free_slots == sum(w.free_slots for w in workers)
    assert book.free_workers == sum(1 for w in workers if w.free_slots)
    assert book.live_slots == sum(w.slots for w in workers if not w.draining)
    draining_leases = sum(len(w.leases - w.suspended) for w in workers if w.draining)
    assert book.draining_leases == draining_leases
    assert all(w.suspended <= w.leases for w in workers)
    assert set(pool.suspended) == {seq for w in workers for seq in w.suspended}
    most = max((w.free_slots for w in workers), default=0)
    chosen = book.most_free()
    assert (chosen.free_slots if chosen is not None else 0) == most
    for seq in SEQS:
        runners = {w.worker_id for w in workers if seq in w.reported}
        runner = book.runner_of(seq)
        assert (runner.worker_id if runner is not None else None) in (runners or {None})
    live = sum(w.slots for w in workers if not w.draining)
    held = len(pool.leases) - draining_leases - len(pool.suspended)  # a suspended lease holds no slot
    assert pool.capacity(max_concurrency) == (max_concurrency or live) - held


def beat_of(scheduler: Scheduler, worker: str, slots: int, draining: bool, mode: int, now: int) -> Heartbeat:
    """Mode 0: lists its leases; 1: drops one (a lost lease); 2: adds a waiting request (adopted); 3: lists
    another worker's lease too (two workers claim one request)."""
    pool = scheduler.pools.get("m")
    own = sorted(pool.workers[worker].leases) if pool is not None and worker in pool.workers else []
    running = list(own)
    if mode == 1 and running:
        running.pop()
    elif mode == 2 and pool is not None:
        running += [seq for seq in SEQS if seq in pool.queue][:1]
    elif mode == 3 and pool is not None:
        running += [seq for seq in pool.leases if seq not in own][:1]
    suspended = sorted(pool.workers[worker].suspended) if pool is not None and worker in pool.workers else []
    free = max(0, slots - len(running) + len(suspended))
    return Heartbeat(
        worker, "m", slots, free, running, 0.0, now, draining=draining, suspended=suspended, max_suspended=2
    )


def pick(seqs: Iterable[int], index: int) -> int:
    """One of `seqs` (0 when there is none): the events name running leases, not random numbers."""
    known = sorted(seqs)
    return known[index % len(known)] if known else 0


@settings(max_examples=300, deadline=None)
@given(events=events, max_concurrency=st.integers(0, 5), preempt_ratio=st.sampled_from([0.0, 1.0]))
def test_worker_index_agrees_with_a_recount(
    events: list[tuple[object, ...]], max_concurrency: int, preempt_ratio: float
) -> None:
    limits = SchedulerLimits(max_concurrency=max_concurrency, lease_confirm_ms=0, preempt_ratio=preempt_ratio)
    scheduler = Scheduler(limits, T0)
    now = T0 + GRACE
    for worker in WORKERS:
        scheduler.heartbeat(Heartbeat(worker, "m", 2, 2, [], 0.0, now), now)
    for kind, *args in events:
        if kind == "enqueue":
            scheduler.enqueue(request(int(args[0]), deadline_ms=now + 60_000), now)  # type: ignore[call-overload]
        elif kind == "beat":
            worker, slots, draining, mode = args
            beat = beat_of(scheduler, str(worker), int(slots), bool(draining), int(mode), now)  # type: ignore[call-overload]
            scheduler.heartbeat(beat, now)
        elif kind == "end":
            scheduler.leases_done([LeaseDone(int(args[0]), "m", "default", 1, 1, completed=True)], now)  # type: ignore[call-overload]
        elif kind == "refuse":
            scheduler.offers_refused([int(args[0])])  # type: ignore[call-overload]
        elif kind == "suspended":  # the worker of one running lease answered a suspend order
            seq = pick(scheduler.pools["m"].leases if "m" in scheduler.pools else [], int(args[0]))  # type: ignore[call-overload]
            scheduler.suspend_answered("m", [seq], [seq], now)
        elif kind == "resume_refused":  # a resume the round ordered was refused: suspended again
            seq = pick(scheduler.preemption.book.resuming, int(args[0]))  # type: ignore[call-overload]
            scheduler.resume_answered("m", [], [seq], now)
        elif kind == "gone":
            scheduler.worker_gone(str(args[0]), now)
        else:
            now += int(args[0])  # type: ignore[call-overload]
            scheduler.tick(now)
            pool = scheduler.pools.get("m")
            silent = (
                [w for w in pool.workers.values() if now - w.last_seen_ms > limits.worker_timeout_ms] if pool else []
            )
            assert not silent  # every worker past its timeout was removed by the tick
        scheduler.dispatch(now)
        pool = scheduler.pools.get("m")
        if pool is not None:
            assert_agrees_with_recount(pool.workers, pool, max_concurrency)
            assert all(pool.leases[seq].worker_id == w.worker_id for w in pool.workers.values() for seq in w.leases)


def test_most_free_spreads_a_round_over_the_emptiest_workers() -> None:
    book = WorkerBook()
    for worker in ("a", "b", "c"):
        book.beat(book.add(worker, "m", 2, T0), 2, False, frozenset(), T0)
    picked = []
    for seq in range(1, 7):
        worker = book.most_free()
        assert worker is not None
        picked.append(worker.worker_id)
        book.lease(worker, seq)
    assert picked == ["a", "b", "c", "a", "b", "c"]
    assert book.most_free() is None and book.free_slots == 0


def test_silent_workers_leave_oldest_first_whatever_order_they_were_heard_in() -> None:
    book = WorkerBook()
    book.add("late", "m", 1, T0 + 500)
    book.add("early", "m", 1, T0 + 100)  # a term replays beats heard before the records it restored
    book.add("live", "m", 1, T0 + 900)
    assert [w.worker_id for w in book.remove_silent(T0 + 600)] == ["early", "late"]
    assert list(book) == ["live"]
