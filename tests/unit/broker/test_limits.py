"""Limits with borrowing, tickets and per-model config in the pure scheduler (simulated clock).

The property test drives random workloads (workers, tickets, users, workloads, priorities, ends,
refusals, expiries, reloads) and checks after every dispatch exactly what `broker.core.limits` promises:
capacity and worker slots are never exceeded; a value at its `limit_by` cap is granted a lease only when
no admissible request of a value below its cap waits; and no admissible request waits while capacity is
left (work-conserving).
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.config import BrokerConfig
from broker.configured_limits import scheduler_limits
from broker.core.decisions import Rejection
from broker.core.limits import ModelLimits, SchedulerLimits, label_value
from broker.core.queue import WaitingRequest
from broker.core.scheduler import Scheduler
from schemas.errors import ErrorCode
from schemas.messages import Lease
from tests.unit.builders import T0, beat, ready_scheduler, verdict

FAR = T0 + 10**9


def request(seq: int, user: str = "", workload: str = "default", model: str = "m", priority: int = 1) -> WaitingRequest:
    ticket = user.startswith("t")  # tickets by user: a flow is all tickets or all worker requests
    return WaitingRequest(seq, f"r{seq}", model, workload, f"_INBOX.{seq}", FAR, T0, priority, user, 100, ticket=ticket)


def test_a_value_borrows_idle_capacity_and_waiters_within_their_cap_go_first() -> None:
    limits = SchedulerLimits(policy="fifo", limit_by="user", limit_per_value=1)
    scheduler, now = ready_scheduler({"a": 3}, limits=limits)
    for seq in (1, 2, 3):
        scheduler.enqueue(request(seq, "alice"), now)
    assert [lease.stream_seq for lease in scheduler.dispatch(now).offers] == [1, 2, 3]  # nobody else waits: borrow
    scheduler.enqueue(request(4, "alice"), now)
    scheduler.enqueue(request(5, "bob"), now)
    scheduler.lease_ended(1, now)
    assert [lease.stream_seq for lease in scheduler.dispatch(now).offers] == [5]  # bob is within his cap
    scheduler.lease_ended(2, now)
    assert [lease.stream_seq for lease in scheduler.dispatch(now).offers] == [4]  # only alice waits: she borrows again


def test_limit_by_workload_and_reload() -> None:
    scheduler, now = ready_scheduler({"a": 2}, limits=SchedulerLimits(policy="fifo"))
    for seq, workload in ((1, "batch"), (2, "batch"), (3, "batch"), (4, "chat")):
        scheduler.enqueue(request(seq, workload=workload), now)
    scheduler.update_limits(SchedulerLimits(policy="fifo", limit_by="workload", limit_per_value=1))
    leases = scheduler.dispatch(now).offers
    assert [lease.stream_seq for lease in leases] == [1, 4]  # chat within its cap beats batch's 2nd
    scheduler.update_limits(SchedulerLimits(policy="fifo"))
    scheduler.lease_ended(4, now)
    assert [lease.stream_seq for lease in scheduler.dispatch(now).offers] == [2]


def test_tickets_need_capacity_but_no_worker() -> None:
    limits = SchedulerLimits(models={"app": ModelLimits(max_concurrency=2, max_inflight_ms=5_000)})
    scheduler, now = ready_scheduler({}, limits=limits)
    for seq in (1, 2, 3):
        assert scheduler.enqueue(request(seq, "t1", model="app"), now).queued
    decisions = scheduler.dispatch(now)
    granted = decisions.tickets
    assert decisions.offers == ()  # tickets are granted, never offered to a worker
    assert [(lease.stream_seq, lease.ticket, lease.worker_id) for lease in granted] == [(1, True, ""), (2, True, "")]
    released = scheduler.release_ticket("r1", now + 10)
    assert [ended.lease for ended in released.tickets_ended] == [granted[0]] and released.round_due
    assert [lease.stream_seq for lease in scheduler.dispatch(now + 10).tickets] == [3]
    assert scheduler.tick(now + 4_999).tickets_ended == ()
    (expired,) = scheduler.tick(now + 5_000).tickets_ended
    assert expired.lease.stream_seq == 2 and expired.why == "expired at max_inflight"
    assert scheduler.running("app") == 1 and scheduler.release_ticket("r2", now + 5_000).tickets_ended == ()


def test_ticket_for_a_model_nobody_can_grant_gets_no_capacity() -> None:
    scheduler, now = ready_scheduler({}, limits=SchedulerLimits())
    later = now + scheduler.limits.worker_timeout_ms
    decision = verdict(scheduler.enqueue(request(1, "t1", model="nomodel"), later))
    assert isinstance(decision, Rejection) and decision.code is ErrorCode.NO_CAPACITY
    assert "max_concurrency" in decision.message


def test_restored_ticket_holds_its_slot_until_its_cutoff() -> None:
    scheduler, now = ready_scheduler({}, limits=SchedulerLimits(models={"app": ModelLimits(max_concurrency=1)}))
    held = Lease(7, "r7", "app", "default", "_INBOX.7", FAR, T0, "", 1, now, cutoff_ms=now + 1_000, ticket=True)
    scheduler.restore_lease(held, now)
    scheduler.enqueue(request(8, "t1", model="app"), now)
    assert scheduler.dispatch(now).tickets == ()
    assert [ended.lease for ended in scheduler.tick(now + 1_000).tickets_ended] == [held]
    assert [lease.stream_seq for lease in scheduler.dispatch(now + 1_000).tickets] == [8]


def test_an_unlimited_ticket_still_has_a_cutoff() -> None:
    scheduler, now = ready_scheduler({}, limits=SchedulerLimits(models={"app": ModelLimits(max_concurrency=1)}))
    scheduler.enqueue(request(1, "t1", model="app"), now)
    (lease,) = scheduler.dispatch(now).tickets
    assert lease.cutoff_ms > now


def test_per_model_tables_complete_themselves_with_the_flat_keys() -> None:
    config = msgspec.convert(
        {
            "max_concurrency": 2,
            "max_queue": 5,
            "limit_by": "user",
            "limit_per_value": 1,
            "models": {"app": {"max_concurrency": 4}},
        },
        BrokerConfig,
    )
    limits = scheduler_limits(config)
    assert limits.for_model("app") == ModelLimits(4, 5, 600_000, "user", 1, 0.0)
    assert limits.for_model("other") == ModelLimits(2, 5, 600_000, "user", 1, 0.0)


def test_limit_by_without_a_cap_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(msgspec.ValidationError, match="models.app.limit_per_value"):
        msgspec.convert({"models": {"app": {"limit_by": "workload"}}}, BrokerConfig)
    with pytest.raises(msgspec.ValidationError, match=r"Expected `float` <= 1.*min_share"):
        msgspec.convert({"min_share": 2}, BrokerConfig)


arrivals = st.tuples(
    st.just("enqueue"), st.sampled_from(["u1", "u2", "u3", "t1"]), st.sampled_from(["w1", "w2"]), st.integers(1, 3)
)
events = st.lists(
    st.one_of(
        arrivals,
        arrivals,
        arrivals,
        st.tuples(st.just("end"), st.integers(0, 10)),
        st.tuples(st.just("end"), st.integers(0, 10)),
        st.tuples(st.just("beat"), st.sampled_from(["a", "b"])),
        st.tuples(st.just("refuse"), st.integers(0, 10)),
        st.tuples(st.just("time"), st.integers(1, 800)),
        st.tuples(st.just("reload"), st.integers(1, 3)),
    ),
    min_size=10,
    max_size=200,
)


@settings(max_examples=1500, deadline=None)
@given(
    events=events,
    policy=st.sampled_from(["wfq", "fifo"]),
    max_concurrency=st.sampled_from([0, 1, 2, 3, 4, 6]),
    slots=st.sampled_from([0, 1, 1, 2, 2]),
    limit_by=st.sampled_from(["user", "workload"]),
    cap=st.integers(1, 3),
    min_share=st.sampled_from([0.0, 0.1, 0.5]),
)
def test_limits_hold_borrowing_is_exact_and_dispatch_is_work_conserving(
    events: list[tuple[object, ...]],
    policy: str,
    max_concurrency: int,
    slots: int,
    limit_by: str,
    cap: int,
    min_share: float,
) -> None:
    limits = SchedulerLimits(
        policy=policy,
        max_concurrency=max_concurrency,
        limit_by=limit_by,
        limit_per_value=cap,  # type: ignore[arg-type]
        min_share=min_share,
        max_inflight_ms=4_000,
    )
    scheduler, now = ready_scheduler({"a": slots, "b": slots}, limits=limits)
    known: dict[int, WaitingRequest] = {}
    for event in events:
        kind = event[0]
        if kind == "enqueue":
            seq = len(known) + 1
            known[seq] = request(seq, str(event[1]), str(event[2]), priority=int(event[3]))  # type: ignore[call-overload]
            scheduler.enqueue(known[seq], now)
        elif kind in ("end", "refuse"):
            pool = scheduler.pools.get("m")  # gone once its workers timed out with nothing left in it
            leased = sorted(pool.leases) if pool else []
            seq = leased[int(event[1]) % len(leased)] if leased else 0  # type: ignore[call-overload]
            scheduler.lease_ended(seq, now) if kind == "end" else scheduler.offers_refused([seq])
        elif kind == "beat":
            pool = scheduler.pools.get("m")
            worker = pool.workers.get(str(event[1])) if pool else None
            scheduler.heartbeat(beat(str(event[1]), slots, sorted(worker.leases) if worker else [], now), now)
        elif kind == "time":
            now += int(event[1])  # type: ignore[call-overload]
            scheduler.tick(now)
        else:
            cap = int(event[1])  # type: ignore[call-overload]
            scheduler.update_limits(dataclasses.replace(scheduler.limits, limit_per_value=cap))
        check_dispatch(scheduler, now, known)


def check_dispatch(scheduler: Scheduler, now: int, known: dict[int, WaitingRequest]) -> None:
    pool = scheduler.pools.get("m")
    if pool is None:  # its workers timed out with nothing left in it: dropped
        return
    limits = scheduler.limits.for_model("m")
    capacity = limits.max_concurrency or sum(w.slots for w in pool.workers.values() if not w.draining)
    held = Counter(label_value(lease, limits.limit_by) for lease in pool.leases.values())
    worker_free = sum(w.free_slots for w in pool.workers.values())
    decisions = scheduler.dispatch(now)
    granted = [*decisions.offers, *decisions.tickets]
    waiting = [r for seq, r in known.items() if seq in pool.queue]

    def admissible(r: WaitingRequest, free: int) -> bool:
        return r.ticket or free > 0

    for i, lease in enumerate(granted):
        value = label_value(lease, limits.limit_by)
        if held[value] >= limits.limit_per_value:  # borrowed: nobody within their cap could have started
            others = waiting + [known[later.stream_seq] for later in granted[i + 1 :]]
            assert not [
                r
                for r in others
                if held[label_value(r, limits.limit_by)] < limits.limit_per_value and admissible(r, worker_free)
            ], (lease, held)
        held[value] += 1
        worker_free -= 0 if lease.ticket else 1
    assert not set(pool.leases) & {r.stream_seq for r in waiting}
    assert all(len(w.leases) <= w.slots for w in pool.workers.values() if w.slots)
    if granted:
        assert len(pool.leases) <= capacity
    if len(pool.leases) < capacity:  # work-conserving
        assert not [r for r in waiting if admissible(r, worker_free)], (waiting, worker_free)


@settings(max_examples=1000, deadline=None)
@given(
    steps=st.lists(st.one_of(st.sampled_from(["t1", "t2", "t3"]), st.integers(0, 5)), min_size=5, max_size=80),
    policy=st.sampled_from(["wfq", "fifo"]),
    capacity=st.integers(1, 4),
    cap=st.integers(1, 2),
)
def test_tickets_borrow_exactly(steps: list[str | int], policy: str, capacity: int, cap: int) -> None:
    """The same promises for a tickets-only model, where every slot change is a grant or a release."""
    model = ModelLimits(max_concurrency=capacity, limit_by="user", limit_per_value=cap)
    scheduler, now = ready_scheduler({}, limits=SchedulerLimits(policy=policy, models={"m": model}))
    scheduler.heartbeat(beat("idle", 0, [], now), now)  # creates the pool; no slots
    known: dict[int, WaitingRequest] = {}
    for step in steps:
        if isinstance(step, str):
            seq = len(known) + 1
            known[seq] = request(seq, step)
            scheduler.enqueue(known[seq], now)
        else:
            leased = sorted(scheduler.pools["m"].leases)
            if leased:
                scheduler.release_ticket(f"r{leased[step % len(leased)]}", now)
        check_dispatch(scheduler, now, known)
