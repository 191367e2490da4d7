"""A draining worker finishes what it runs and takes nothing new: its slots and its leases leave the
model's capacity together, so the model's other workers are not held idle by leases they cannot take."""

from __future__ import annotations

from broker.core.scheduler import Scheduler, SchedulerLimits
from schemas.messages import Heartbeat
from tests.unit.builders import GRACE, T0, beat, request


def draining_beat(worker: str, slots: int, running: list[int], now: int) -> Heartbeat:
    return Heartbeat(worker, "m", slots, 0, running, 0.0, now, draining=True)


def test_other_workers_fill_up_while_one_drains() -> None:
    scheduler = Scheduler(SchedulerLimits(), T0)
    now = T0 + GRACE
    scheduler.heartbeat(beat("a", 2, [], now), now)
    for seq in (1, 2):
        scheduler.enqueue(request(seq), now)
    assert {lease.worker_id for lease in scheduler.dispatch(now).offers} == {"a"}
    scheduler.heartbeat(beat("b", 2, [], now), now)
    scheduler.heartbeat(draining_beat("a", 2, [1, 2], now + 1), now + 1)  # a drains its two long answers
    for seq in (3, 4, 5):
        scheduler.enqueue(request(seq), now + 1)
    leases = scheduler.dispatch(now + 1).offers
    assert [(lease.stream_seq, lease.worker_id) for lease in leases] == [(3, "b"), (4, "b")]
    assert scheduler.running("m") == 4 and scheduler.waiting("m") == 1


def test_draining_leases_end_without_freeing_capacity_twice() -> None:
    scheduler = Scheduler(SchedulerLimits(), T0)
    now = T0 + GRACE
    scheduler.heartbeat(beat("a", 1, [], now), now)
    scheduler.heartbeat(beat("b", 1, [], now), now)
    for seq in (1, 2, 3):
        scheduler.enqueue(request(seq), now)
    assert len(scheduler.dispatch(now).offers) == 2
    on_a = next(seq for seq in (1, 2) if seq in scheduler.pools["m"].workers["a"].leases)
    scheduler.heartbeat(draining_beat("a", 1, [on_a], now + 1), now + 1)
    assert scheduler.dispatch(now + 1).offers == ()  # b is busy, a takes nothing
    scheduler.lease_ended(on_a, now + 2)
    assert scheduler.dispatch(now + 2).offers == ()  # a's end frees no slot: a drains
