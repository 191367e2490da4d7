"""The pure scheduler, driven by events and a simulated clock (no server, no sleeps)."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.decisions import Decisions, Queued, Rejection
from broker.core.queue import FifoQueue, WaitingRequest
from broker.core.scheduler import Scheduler, SchedulerLimits
from schemas.errors import ErrorCode
from schemas.messages import LeaseDone
from tests.unit.builders import GRACE, T0, beat, ready_scheduler, request, verdict


def test_fifo_dispatch_respects_slots_and_max_concurrency() -> None:
    scheduler, now = ready_scheduler({"a": 2, "b": 2}, max_concurrency=3)
    for seq in range(1, 6):
        assert scheduler.enqueue(request(seq), now).queued
    leases = scheduler.dispatch(now).offers
    assert [lease.stream_seq for lease in leases] == [1, 2, 3]
    assert sorted(lease.worker_id for lease in leases).count("a") <= 2
    assert scheduler.dispatch(now).offers == ()
    scheduler.lease_ended(2, now + 10)
    assert [lease.stream_seq for lease in scheduler.dispatch(now + 10).offers] == [4]


def test_no_offers_during_startup_grace() -> None:
    scheduler = Scheduler(SchedulerLimits(), T0)
    scheduler.heartbeat(beat("a", 1, [], T0), T0)
    scheduler.enqueue(request(1), T0)
    assert scheduler.dispatch(T0).offers == ()
    assert [lease.stream_seq for lease in scheduler.dispatch(T0 + GRACE).offers] == [1]


def test_queued_requests_hear_position_and_eta() -> None:
    scheduler, now = ready_scheduler({"a": 1})
    positions = [verdict(scheduler.enqueue(request(seq), now)) for seq in (1, 2, 3)]
    assert [p.position for p in positions if isinstance(p, Queued)] == [0, 1, 2]


def test_dead_worker_leases_requeue_with_next_attempt() -> None:
    scheduler, now = ready_scheduler({"a": 1, "b": 1})
    scheduler.enqueue(request(1), now)
    (lease,) = scheduler.dispatch(now).offers
    later = now + scheduler.limits.worker_timeout_ms + 1
    other = "b" if lease.worker_id == "a" else "a"
    scheduler.heartbeat(beat(other, 1, [], later), later)
    decisions = scheduler.tick(later)
    (requeued,) = decisions.requeued
    assert requeued.request.stream_seq == 1 and requeued.request.attempt == 2 and requeued.worker_id == lease.worker_id
    assert decisions.rejections == ()
    (again,) = scheduler.dispatch(later).offers
    assert again.worker_id == other and again.attempt == 2


def test_lease_missing_from_heartbeat_is_lost_only_after_confirm_window() -> None:
    scheduler, now = ready_scheduler({"a": 1})
    scheduler.enqueue(request(1), now)
    scheduler.dispatch(now)
    assert scheduler.heartbeat(beat("a", 1, [], now + 100), now + 100).requeued == ()  # offer may be in flight
    late = now + scheduler.limits.lease_confirm_ms + 1
    lost = scheduler.heartbeat(beat("a", 1, [], late), late)
    assert [r.request.stream_seq for r in lost.requeued] == [1] and lost.round_due


def test_running_lease_reported_by_worker_is_adopted_not_rerun() -> None:
    """A restarted broker whose lease record was lost must not offer what a worker already runs."""
    scheduler, now = ready_scheduler({"a": 1, "b": 1})
    scheduler.heartbeat(beat("a", 1, [7], now), now)
    assert verdict(scheduler.enqueue(request(7), now)) is None
    assert scheduler.running("m") == 1 and scheduler.waiting("m") == 0
    scheduler.enqueue(request(8), now)
    assert [(lease.stream_seq, lease.worker_id) for lease in scheduler.dispatch(now).offers] == [(8, "b")]


def test_expired_waiting_request_is_dropped() -> None:
    scheduler, now = ready_scheduler({})
    scheduler.enqueue(request(1, deadline_ms=now + 500), now)
    assert scheduler.tick(now + 499).rejections == ()
    (expired,) = scheduler.tick(now + 500).rejections
    assert expired.request.stream_seq == 1 and expired.code is ErrorCode.DEADLINE_EXCEEDED and expired.delete_record
    assert scheduler.waiting("m") == 0


def test_no_capacity_once_warmed_up_without_workers() -> None:
    scheduler = Scheduler(SchedulerLimits(), T0)
    assert scheduler.enqueue(request(1), T0).queued  # workers may still be starting
    decision = verdict(scheduler.enqueue(request(2, model="other"), T0 + scheduler.limits.worker_timeout_ms))
    assert isinstance(decision, Rejection) and decision.code is ErrorCode.NO_CAPACITY
    assert decision.retry_after_s and decision.retry_after_s > 0


def test_refused_offer_goes_back_in_order_and_worker_rests_until_next_beat() -> None:
    scheduler, now = ready_scheduler({"a": 1})
    scheduler.enqueue(request(1), now)
    scheduler.enqueue(request(2), now)
    (lease,) = scheduler.dispatch(now).offers
    scheduler.offers_refused([lease.stream_seq])
    assert scheduler.dispatch(now).offers == ()
    scheduler.heartbeat(beat("a", 1, [], now + 1), now + 1)
    (again,) = scheduler.dispatch(now + 1).offers
    assert again.stream_seq == 1 and again.attempt == 1


def test_fifo_queue_positions_and_removal() -> None:
    queue = FifoQueue()
    for seq in (5, 3, 9):
        queue.push(request(seq))
    assert queue.position(3) == 0 and queue.position(9) == 2
    assert queue.remove(5) is not None and 5 not in queue
    assert [queue.pop(), queue.pop(), queue.pop()] == [request(3), request(9), None]


events = st.lists(
    st.one_of(
        st.tuples(st.just("enqueue"), st.integers(1, 40)),
        st.tuples(st.just("end"), st.integers(1, 40)),
        st.tuples(st.just("beat"), st.sampled_from(["a", "b", "c"])),
        st.tuples(st.just("refuse"), st.integers(1, 40)),
        st.tuples(st.just("time"), st.integers(1, 5_000)),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(events=events, max_concurrency=st.integers(0, 4), slots=st.integers(1, 3))
def test_invariants_under_random_events(events: list[tuple[str, object]], max_concurrency: int, slots: int) -> None:
    """No limit is exceeded, a request is never both waiting and leased, and the scheduler is
    work-conserving: after dispatch, either nothing waits or no admissible capacity is left."""
    scheduler, now = ready_scheduler({"a": slots, "b": slots}, max_concurrency=max_concurrency)
    for kind, value in events:
        if kind == "enqueue":
            scheduler.enqueue(request(int(value), deadline_ms=now + 20_000), now)  # type: ignore[arg-type]
        elif kind == "end":
            scheduler.lease_ended(int(value), now)  # type: ignore[arg-type]
        elif kind == "refuse":
            scheduler.offers_refused([int(value)])  # type: ignore[arg-type]
        elif kind == "beat":
            worker = str(value)
            workers = scheduler.pools["m"].workers if "m" in scheduler.pools else {}
            running = sorted(workers[worker].leases) if worker in workers else []
            scheduler.heartbeat(beat(worker, slots, running, now), now)
        else:
            now += int(value)  # type: ignore[call-overload]
            scheduler.tick(now)
        scheduler.dispatch(now)
        pool = scheduler.pools.get("m")
        if pool is None:  # every worker timed out with nothing waiting: the model's state is dropped
            continue
        leased = set(pool.leases)
        assert not leased & {s for s in range(1, 41) if s in pool.queue}
        assert all(len(w.leases) <= w.slots for w in pool.workers.values())
        if max_concurrency:
            assert len(pool.leases) <= max_concurrency
        assert all(lease.deadline_ms > lease.leased_ms for lease in pool.leases.values())
        capacity_left = (max_concurrency or sum(w.slots for w in pool.workers.values())) - len(pool.leases)
        free_worker = any(w.free_slots for w in pool.workers.values())
        assert len(pool.queue) == 0 or capacity_left <= 0 or not free_worker


def test_max_queue_per_workload_rejects_with_retry_after() -> None:
    scheduler = Scheduler(SchedulerLimits(max_queue=2), T0)
    now = T0 + GRACE
    scheduler.heartbeat(beat("a", 1, [], now), now)
    decisions = [verdict(scheduler.enqueue(request(seq), now)) for seq in (1, 2, 3)]
    assert [type(d).__name__ for d in decisions] == ["Queued", "Queued", "Rejection"]
    rejection = decisions[2]
    assert isinstance(rejection, Rejection) and rejection.code is ErrorCode.QUEUE_FULL
    assert rejection.retry_after_s and rejection.retry_after_s >= 1
    other = WaitingRequest(4, "r4", "m", "other", "_INBOX.4", T0 + 600_000, T0)
    assert scheduler.enqueue(other, now).queued  # the limit is per workload


def test_deadline_unmeetable_once_service_time_is_known() -> None:
    scheduler, now = ready_scheduler({"a": 1})
    scheduler.enqueue(request(1), now)
    (lease,) = scheduler.dispatch(now).offers
    scheduler.lease_ended(lease.stream_seq, now + 10_000)  # one request took 10 s
    now += 10_000
    scheduler.enqueue(request(2), now)
    scheduler.dispatch(now)  # request 2 runs; request 3 would start in ~10 s
    tight = verdict(scheduler.enqueue(request(3, deadline_ms=now + 5_000), now))
    assert isinstance(tight, Rejection) and tight.code is ErrorCode.DEADLINE_UNMEETABLE
    assert "estimated start in 10.0 s" in tight.message and tight.retry_after_s == 10.0
    assert scheduler.waiting("m") == 0
    assert scheduler.enqueue(request(4, deadline_ms=now + 30_000), now).queued


def test_lease_carries_max_inflight_cutoff() -> None:
    scheduler, now = ready_scheduler({"a": 1}, limits=SchedulerLimits(max_inflight_ms=60_000))
    scheduler.enqueue(request(1), now)
    (lease,) = scheduler.dispatch(now).offers
    assert lease.cutoff_ms == now + 60_000


def test_completion_length_is_learned_per_workload() -> None:
    scheduler, now = ready_scheduler({"a": 1})
    first = msgspec.structs.replace(request(1), prompt_tokens_est=10)
    scheduler.enqueue(first, now)
    (lease,) = scheduler.dispatch(now).offers
    assert lease.cost_tokens == 10 + 256  # nothing learned yet: the default completion estimate
    done = LeaseDone(lease.stream_seq, "m", "default", prompt_tokens=12, completion_tokens=40)
    (finished,) = scheduler.leases_done([done], now + 1).finished
    assert finished.done == done and finished.priority == 1
    second = msgspec.structs.replace(request(2), prompt_tokens_est=10)
    scheduler.enqueue(second, now + 1)
    (lease2,) = scheduler.dispatch(now + 1).offers
    assert lease2.cost_tokens == 10 + 40


def test_queue_update_when_position_halves() -> None:
    scheduler, now = ready_scheduler({"a": 1})
    for seq in range(1, 18):
        scheduler.enqueue(request(seq), now)  # seq 17 waits at position 16 (none started yet)
    sent: list[tuple[str, int]] = []
    for i in range(12):
        (lease,) = scheduler.dispatch(now).offers
        later = now + 1000 * (i + 1)
        scheduler.heartbeat(beat("a", 1, [lease.stream_seq], later), later)  # alive through the ticks
        sent += [(notice.reply_to, notice.position) for notice in scheduler.tick(later).notices]
        scheduler.lease_ended(lease.stream_seq, now)
    last = [position for reply_to, position in sent if reply_to == "_INBOX.17"]
    assert last == [8, 4]  # 16 → 8 after 8 starts → 4 after 4 more, then no more chatter
    assert all(position >= 0 for _, position in sent)


def test_queue_updates_at_most_once_a_second_per_request() -> None:
    scheduler, now = ready_scheduler({"a": 1})
    for seq in range(1, 66):
        scheduler.enqueue(request(seq), now)  # seq 65 waits at position 64
    sent: list[tuple[int, int]] = []
    for i in range(60):  # 60 starts in 600 ms: its position halves 3 times, but only 1 s may pass
        (lease,) = scheduler.dispatch(now + 10 * i).offers
        notices = scheduler.tick(now + 10 * i).notices
        sent += [(now + 10 * i, n.position) for n in notices if n.reply_to == "_INBOX.65"]
        scheduler.lease_ended(lease.stream_seq, now + 10 * i)
    assert sent == []  # the admission update was less than a second ago
    later = [n.position for n in scheduler.tick(now + 1000).notices if n.reply_to == "_INBOX.65"]
    assert later == [4]  # one update, with the position it has now


def test_decisions_add_up_in_order() -> None:
    first, second = Queued(request(1), 0, 1.0), Queued(request(2), 1, 2.0)
    both = Decisions(queued=(first,)) + Decisions(queued=(second,), round_due=True)
    assert both.queued == (first, second) and both.round_due and both.offers == ()
    assert Decisions() + Decisions() == Decisions() and not (Decisions() + Decisions()).round_due


def test_each_event_says_whether_a_round_is_due() -> None:
    scheduler, now = ready_scheduler({"a": 1})
    assert scheduler.enqueue(request(1), now).round_due  # a request waits
    assert not scheduler.dispatch(now).round_due  # a round never asks for another by itself
    assert scheduler.heartbeat(beat("a", 1, [1], now + 1), now + 1).round_due
    assert scheduler.lease_ended(1, now + 2).round_due  # a slot is free
    assert not scheduler.cancel("nobody", now + 2).round_due


def test_a_request_past_its_deadline_is_rejected_not_leased_between_ticks() -> None:
    """A round between ticks must not offer a request whose deadline passed: its stream TTL may have removed
    it already, and the worker, finding nothing to run, sends nothing: the client would get no final."""
    scheduler, now = ready_scheduler({"a": 1})
    scheduler.enqueue(request(1, deadline_ms=now + 500), now)
    decisions = scheduler.dispatch(now + 500)
    assert decisions.offers == ()
    (expired,) = decisions.rejections
    assert expired.request.stream_seq == 1 and expired.code is ErrorCode.DEADLINE_EXCEEDED and expired.delete_record
    assert scheduler.waiting("m") == 0
