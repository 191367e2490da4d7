"""Priority preemption in the pure core: who is suspended for whom, the guards, and the way back."""

from __future__ import annotations

import dataclasses

from broker.core.limits import SchedulerLimits
from broker.core.scheduler import Scheduler
from schemas.messages import Heartbeat
from tests.unit.builders import ready_scheduler, request

RATIO = SchedulerLimits(preempt_ratio=3.0, preempt_min_run_ms=1_000, preempt_max_per_request=1)


def suspending(max_suspended: int = 2, limits: SchedulerLimits = RATIO) -> tuple[Scheduler, int]:
    """One worker with two slots, able to hold `max_suspended` suspended, both slots running priority 1."""
    scheduler, now = ready_scheduler({"w": 2}, limits=limits)
    scheduler.heartbeat(Heartbeat("w", "m", 2, 2, [], 0.0, now, max_suspended=max_suspended), now)
    for seq in (1, 2):
        scheduler.enqueue(request(seq, workload="free", priority=1), now)
    offers = scheduler.dispatch(now).offers
    assert [lease.stream_seq for lease in offers] == [1, 2]
    return scheduler, now


def one_suspended() -> tuple[Scheduler, int]:
    """`suspending()`, then lease 2 suspended for a paid priority-5 request 3 two seconds on: the time then."""
    scheduler, now = suspending()
    scheduler.enqueue(request(3, workload="paid", priority=5), now)
    later = now + 2_000
    scheduler.dispatch(later)
    scheduler.suspend_answered("m", [2], [2], later)
    return scheduler, later


def test_a_request_ranked_past_the_ratio_suspends_the_lowest_running_lease() -> None:
    scheduler, now = suspending()
    scheduler.enqueue(request(3, workload="paid", priority=5), now)
    later = now + 2_000
    decisions = scheduler.dispatch(later)
    assert [lease.stream_seq for lease in decisions.suspends] == [2]  # equal ranks: the one started last
    assert not decisions.offers
    assert not scheduler.dispatch(later).suspends  # one in flight per model
    after = scheduler.suspend_answered("m", [2], [2], later) + scheduler.dispatch(later)
    assert [lease.stream_seq for lease in after.offers] == [3]  # the freed slot goes to the waiting one


def test_no_preemption_below_the_ratio_before_min_run_or_without_budget() -> None:
    scheduler, now = suspending()
    scheduler.enqueue(request(3, workload="paid", priority=2), now)  # 2 < 3 x 1
    assert not scheduler.dispatch(now + 2_000).suspends
    scheduler, now = suspending()
    scheduler.enqueue(request(3, workload="paid", priority=5), now)
    assert not scheduler.dispatch(now + 500).suspends  # ran only 0.5 s
    scheduler, now = suspending(max_suspended=0)
    scheduler.enqueue(request(3, workload="paid", priority=5), now)
    assert not scheduler.dispatch(now + 2_000).suspends  # the worker cannot hold a suspended one
    scheduler, now = suspending(limits=SchedulerLimits())
    scheduler.enqueue(request(3, workload="paid", priority=5), now)
    assert not scheduler.dispatch(now + 2_000).suspends  # off by default


def test_a_suspended_lease_resumes_first_once_a_slot_frees_and_only_once_suspended() -> None:
    scheduler, later = one_suspended()
    assert [lease.stream_seq for lease in scheduler.dispatch(later).offers] == [3]
    scheduler.enqueue(request(4, workload="free", priority=1), later)
    scheduler.lease_ended(3, later + 100)
    decisions = scheduler.dispatch(later + 100)
    assert [lease.stream_seq for lease in decisions.resumes] == [2] and not decisions.offers
    assert not scheduler.dispatch(later + 100).offers  # its slot is taken again while the resume is in flight
    scheduler.resume_answered("m", [2], [], later + 100)
    scheduler.enqueue(request(5, workload="paid", priority=5), later + 100)
    suspends = scheduler.dispatch(later + 5_000).suspends
    assert [lease.stream_seq for lease in suspends] == [1]  # 2 is at its cap of one suspension: it runs on


def test_a_refused_resume_waits_suspended_and_a_lost_worker_forgets_it() -> None:
    scheduler, later = one_suspended()
    scheduler.dispatch(later)
    scheduler.lease_ended(3, later)
    assert [lease.stream_seq for lease in scheduler.dispatch(later).resumes] == [2]
    scheduler.resume_answered("m", [], [2], later)
    pool = scheduler.pools["m"]
    assert 2 in pool.suspended and pool.capacity(0) == 1  # suspended again: no slot held
    decisions = scheduler.worker_gone("w", later + 10)
    assert [r.request.stream_seq for r in decisions.requeued] == [1, 2]
    assert not pool.suspended and not scheduler.preemption.book.times


def test_a_heartbeat_teaches_a_new_term_its_suspended_leases() -> None:
    limits = RATIO
    scheduler, now = ready_scheduler({}, limits=limits)
    for seq in (1, 2):
        scheduler.enqueue(request(seq), now)
    beat = Heartbeat("w", "m", 1, 1, [1, 2], 0.0, now, suspended=[2], max_suspended=1)
    scheduler.heartbeat(beat, now)
    scheduler.heartbeat(beat, now + limits.lease_confirm_ms + 1)
    pool = scheduler.pools["m"]
    assert set(pool.leases) == {1, 2} and 2 in pool.suspended and pool.workers["w"].free_slots == 0


def high_takes_the_slot_it_freed(scheduler: Scheduler, now: int) -> int:
    """Three low requests wait; a high one (seq 6) arrives 2 s later, suspends lease 2 and takes the slot
    that freed. When it arrived."""
    for seq in (3, 4, 5):
        scheduler.enqueue(request(seq, workload="free", priority=1), now)
    later = now + 2_000
    scheduler.enqueue(request(6, workload="paid", priority=5), later)
    assert [lease.stream_seq for lease in scheduler.dispatch(later).suspends] == [2]
    after = scheduler.suspend_answered("m", [2], [2], later) + scheduler.dispatch(later)
    assert [lease.stream_seq for lease in after.offers] == [6]
    return later


def test_the_slot_a_suspension_frees_goes_to_the_request_that_outranked_the_suspended_one() -> None:
    """Overload: low requests wait too. Under shares a high request that starts waiting ties with the low
    flow's head (stride order serves the low one first, then the high one), and a high flow served a moment
    ago still owes; either way the slot its suspension freed must go to it, not to the next low request."""
    scheduler, now = suspending()
    later = high_takes_the_slot_it_freed(scheduler, now)
    scheduler.lease_ended(6, later + 100)  # the high flow was just served: it owes when its next one comes
    scheduler.enqueue(request(7, workload="paid", priority=5), later + 100)
    decisions = scheduler.dispatch(later + 100)
    assert not decisions.resumes and [lease.stream_seq for lease in decisions.offers] == [7]


def test_a_freed_slot_whose_high_request_left_goes_to_the_queue_order_again() -> None:
    """The request a suspension was for is cancelled before the slot frees: the suspended lease resumes,
    and nothing waits for a rank no one waiting has."""
    scheduler, now = suspending()
    scheduler.enqueue(request(3, workload="free", priority=1), now)
    later = now + 2_000
    scheduler.enqueue(request(4, workload="paid", priority=5), later)
    assert [lease.stream_seq for lease in scheduler.dispatch(later).suspends] == [2]
    scheduler.cancel("r4", later)
    decisions = scheduler.suspend_answered("m", [2], [2], later) + scheduler.dispatch(later)
    assert [lease.stream_seq for lease in decisions.resumes] == [2] and not decisions.offers
    scheduler.resume_answered("m", [2], [], later)
    scheduler.lease_ended(1, later + 50)
    assert [lease.stream_seq for lease in scheduler.dispatch(later + 50).offers] == [3]


def test_with_a_minimum_share_a_slot_a_lease_ended_goes_by_the_queue_order() -> None:
    """min_share bounds every band's wait: only the slot a suspension freed skips the queue's order."""
    scheduler, now = suspending(limits=dataclasses.replace(RATIO, min_share=0.2))
    later = high_takes_the_slot_it_freed(scheduler, now)
    scheduler.lease_ended(6, later + 100)
    scheduler.enqueue(request(7, workload="paid", priority=5), later + 100)
    assert [lease.stream_seq for lease in scheduler.dispatch(later + 100).offers] == [3]


def test_under_strict_bands_a_freed_slot_goes_to_the_band_that_preempted() -> None:
    """Strict bands with a minimum share take turns with the low band too; the slot a suspension freed
    still goes to the high band's request, and only then the low band has its turn again."""
    scheduler, now = suspending(limits=dataclasses.replace(RATIO, priority_mode="strict", min_share=0.5))
    high_takes_the_slot_it_freed(scheduler, now)
