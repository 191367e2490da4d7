"""Requests for models no worker serves: `no_capacity`, and no state left behind (pools, deadline entries)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from broker.core.decisions import Rejection
from broker.core.pool import MAX_LEARNED_WORKLOADS
from broker.core.queue import WaitingRequest
from broker.core.scheduler import Scheduler, SchedulerLimits
from broker.core.wfq import WfqQueue
from schemas.errors import ErrorCode
from schemas.messages import Heartbeat, LeaseDone
from tests.unit.builders import verdict

T0 = 1_000_000
WARM = SchedulerLimits().worker_timeout_ms


def request(seq: int, model: str, workload: str = "default", deadline_ms: int = T0 + 600_000) -> WaitingRequest:
    return WaitingRequest(seq, f"r{seq}", model, workload, f"_INBOX.{seq}", deadline_ms, T0)


def beat(worker: str, now: int, model: str = "m") -> Heartbeat:
    return Heartbeat(worker, model, 1, 1, [], 0.0, now)


def test_an_unknown_model_is_refused_without_a_trace() -> None:
    scheduler = Scheduler(SchedulerLimits(), T0)
    scheduler.heartbeat(beat("w", T0 + WARM), T0 + WARM)
    decision = verdict(scheduler.enqueue(request(1, "nosuch"), T0 + WARM))
    assert isinstance(decision, Rejection) and decision.code is ErrorCode.NO_CAPACITY
    assert set(scheduler.pools) == {"m"} and not scheduler.knows(1)


def test_requests_from_the_start_up_grace_get_no_capacity_once_the_broker_knows() -> None:
    """Queued while heartbeats are still being learnt; refused by the first round after the grace."""
    scheduler = Scheduler(SchedulerLimits(), T0)
    assert scheduler.enqueue(request(1, "nosuch"), T0).queued
    assert scheduler.enqueue(request(2, "m"), T0).queued
    assert scheduler.tick(T0 + WARM - 1).rejections == ()  # still learning
    scheduler.heartbeat(beat("w", T0 + 10), T0 + 10)  # model m has a worker
    scheduler.heartbeat(beat("w", T0 + WARM), T0 + WARM)
    rejected = scheduler.tick(T0 + WARM).rejections
    assert [(r.request.stream_seq, r.code, r.delete_record) for r in rejected] == [(1, ErrorCode.NO_CAPACITY, False)]
    assert "nosuch" not in scheduler.pools and not scheduler.knows(1) and scheduler.knows(2)
    assert scheduler.tick(T0 + WARM + 100).rejections == ()


def test_a_model_whose_workers_died_keeps_its_waiting_requests_then_goes() -> None:
    limits = SchedulerLimits()
    scheduler = Scheduler(limits, T0)
    now = T0 + WARM
    scheduler.heartbeat(beat("w", now), now)
    scheduler.enqueue(request(1, "m"), now)
    scheduler.enqueue(request(2, "m"), now)
    scheduler.dispatch(now)  # 1 runs on w, 2 waits
    later = now + limits.worker_timeout_ms + 1
    decisions = scheduler.tick(later)  # w is gone; 1 goes back to the queue
    assert [r.request.stream_seq for r in decisions.requeued] == [1]
    assert decisions.rejections == () and scheduler.waiting("m") == 2  # a worker may come back
    expired = scheduler.tick(T0 + 600_000).rejections
    assert sorted((r.request.stream_seq, r.code) for r in expired) == [
        (1, ErrorCode.DEADLINE_EXCEEDED),
        (2, ErrorCode.DEADLINE_EXCEEDED),
    ]
    assert "m" not in scheduler.pools


@given(
    st.lists(st.tuples(st.text("abc", min_size=1, max_size=3), st.text("xyz", min_size=1, max_size=3)), max_size=300)
)
def test_arbitrary_model_names_leave_nothing_behind(names: list[tuple[str, str]]) -> None:
    scheduler = Scheduler(SchedulerLimits(), T0)
    for seq, (model, workload) in enumerate(names, start=1):
        scheduler.enqueue(request(seq, model, workload), T0 + seq % 7)  # some in the grace, some after
    for seq, (model, workload) in enumerate(names, start=len(names) + 1):
        scheduler.enqueue(request(seq, model, workload), T0 + WARM)
    scheduler.tick(T0 + WARM)
    assert scheduler.pools == {} and not any(scheduler.knows(seq) for seq in range(1, 2 * len(names) + 1))


def test_deadline_entries_of_requests_gone_are_dropped() -> None:
    """100,000 requests queued and cancelled: the lazy deadline heap is compacted, not kept to their deadlines."""
    scheduler = Scheduler(SchedulerLimits(), T0)
    now = T0 + WARM
    scheduler.heartbeat(beat("w", now), now)
    for seq in range(1, 100_001):
        scheduler.enqueue(request(seq, "m"), now)
        scheduler.cancel(f"r{seq}", now)
    scheduler.tick(now + 1)
    assert len(scheduler._deadlines) <= 1024


def test_workload_names_a_client_invents_leave_bounded_state_on_a_served_model() -> None:
    """Every request to the served model under a new workload name runs and ends: what the model remembers
    per workload (learned completion lengths, fair-queuing flows, counts) stays bounded, the most recently
    finished workloads' lengths are kept."""
    scheduler = Scheduler(SchedulerLimits(), T0)
    now = T0 + WARM
    total = 3 * MAX_LEARNED_WORKLOADS
    for seq in range(1, total + 1):
        scheduler.heartbeat(beat("w", now), now)
        assert scheduler.enqueue(request(seq, "m", workload=f"w{seq}"), now).queued
        (lease,) = scheduler.dispatch(now).offers
        done = LeaseDone(seq, "m", f"w{seq}", prompt_tokens=5, completion_tokens=seq % 7, completed=True)
        scheduler.leases_done([done], now)
        now += 1
    pool = scheduler.pools["m"]
    assert len(pool.completion_tokens_ema) == MAX_LEARNED_WORKLOADS
    assert pool.completion_tokens_ema.get(f"w{total}") == total % 7 and pool.completion_tokens_ema.get("w1") is None
    assert isinstance(pool.queue, WfqQueue) and pool.queue.remembered() <= 2
    assert not pool.leases and not len(pool.queue) and not scheduler.knows(total)
