"""A round offers to at most `offer_room` workers (`broker.core.round_offers`): it spreads its leases over
the emptiest workers, unless the backlog fills every free slot anyway and there are more free workers than
the room: then it fills each worker it offers to; tickets need no offer and still start; a bound of none is
the unbounded round."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.limits import SchedulerLimits
from schemas.messages import LeaseDone
from tests.unit.builders import ready_scheduler, request


def _offered(workers: dict[str, int], waiting: int, room: int | None) -> Counter[str]:
    scheduler, now = ready_scheduler(workers)
    for seq in range(1, waiting + 1):
        scheduler.enqueue(request(seq), now)
    return Counter(lease.worker_id for lease in scheduler.dispatch(now, offer_room=room).offers)


def test_within_the_room_a_round_spreads_over_the_emptiest_workers() -> None:
    assert _offered({"a": 4, "b": 4, "c": 4}, 6, room=3) == {"a": 2, "b": 2, "c": 2}
    assert _offered({"a": 4, "b": 4, "c": 4}, 6, room=None) == {"a": 2, "b": 2, "c": 2}


def test_a_backlog_for_every_free_slot_fills_each_worker_offered_when_the_room_is_short() -> None:
    workers = {f"w{i}": 8 for i in range(10)}
    assert _offered(workers, 100, room=3) == {"w0": 8, "w1": 8, "w2": 8}
    assert _offered(workers, 100, room=None) == {name: 8 for name in workers}


def test_a_backlog_smaller_than_the_free_slots_spreads_one_per_worker_within_the_room() -> None:
    workers = {f"w{i}": 8 for i in range(10)}
    assert _offered(workers, 5, room=3) == {"w0": 1, "w1": 1, "w2": 1}  # the other two next round, elsewhere
    assert _offered(workers, 5, room=None) == {f"w{i}": 1 for i in range(5)}


def test_no_room_offers_nothing_but_tickets_still_start() -> None:
    scheduler, now = ready_scheduler({"a": 2}, max_concurrency=4)
    scheduler.enqueue(request(1), now)
    scheduler.enqueue(request(2, workload="apps", ticket=True), now)  # a flow of its own: a flow keeps order
    decisions = scheduler.dispatch(now, offer_room=0)
    assert decisions.offers == () and [lease.stream_seq for lease in decisions.tickets] == [2]
    assert [lease.stream_seq for lease in scheduler.dispatch(now, offer_room=1).offers] == [1]


@settings(max_examples=150, deadline=None)
@given(
    slots=st.lists(st.integers(1, 8), min_size=1, max_size=12),
    rooms=st.lists(st.integers(0, 6), min_size=1, max_size=12),
    waiting=st.integers(0, 80),
)
def test_rounds_never_offer_to_more_workers_than_their_room_and_stop_only_when_spent(
    slots: list[int], rooms: list[int], waiting: int
) -> None:
    """Whatever the room, a round offers to at most that many workers, and stops only when the queue is empty,
    the model is full, or the room is spent."""
    scheduler, now = ready_scheduler({f"w{i}": n for i, n in enumerate(slots)}, limits=SchedulerLimits())
    for seq in range(1, waiting + 1):
        scheduler.enqueue(request(seq), now)
    for room in rooms:
        offers = scheduler.dispatch(now, offer_room=room).offers
        offered = {lease.worker_id for lease in offers}
        assert len(offered) <= room
        pool = scheduler.pools["m"]
        if len(pool.queue) and pool.workers.free_slots:  # stopped with work and slots left: the room is spent
            assert len(offered) == room
        ended = [LeaseDone(lease.stream_seq, "m", "default", 1, 1, True, 0.1) for lease in offers[::2]]
        scheduler.leases_done(ended, now)
