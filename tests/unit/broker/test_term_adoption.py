"""A new term replays the stream: what an earlier term queued keeps its place and is judged only by
its deadline, never again by `no_capacity`, `queue_full` or `deadline_unmeetable`; and a request a worker
still runs (its lease record lost) is adopted, not failed."""

from __future__ import annotations

from broker.core.decisions import Queued, Rejection
from broker.core.queue import WaitingRequest
from broker.core.scheduler import Scheduler, SchedulerLimits
from schemas.errors import ErrorCode
from tests.unit.builders import GRACE, T0, beat, request, verdict

TERM_MS = T0 + 60_000  # the new term starts a minute after the requests were stored


def test_backlog_of_a_model_not_heard_yet_keeps_waiting() -> None:
    scheduler = Scheduler(SchedulerLimits(), TERM_MS, adopt_before_ms=TERM_MS)
    warmed = TERM_MS + scheduler.limits.worker_timeout_ms
    assert scheduler.enqueue(request(1), warmed).queued  # stored at T0 by the old term
    fresh = WaitingRequest(2, "r2", "m", "default", "_INBOX.2", warmed + 60_000, warmed)
    decision = verdict(scheduler.enqueue(fresh, warmed))
    assert isinstance(decision, Rejection) and decision.code is ErrorCode.NO_CAPACITY  # new ones are judged


def test_backlog_over_a_lowered_max_queue_keeps_its_place() -> None:
    scheduler = Scheduler(SchedulerLimits(max_queue=1), TERM_MS, adopt_before_ms=TERM_MS)
    now = TERM_MS + GRACE
    scheduler.heartbeat(beat("a", 1, [], now), now)
    decisions = [verdict(scheduler.enqueue(request(seq), now)) for seq in (1, 2, 3)]
    assert all(isinstance(d, Queued) for d in decisions)
    assert [lease.stream_seq for lease in scheduler.dispatch(now).offers] == [1]


def test_backlog_is_not_judged_unmeetable() -> None:
    scheduler = Scheduler(SchedulerLimits(), TERM_MS, adopt_before_ms=TERM_MS)
    now = TERM_MS + GRACE
    scheduler.heartbeat(beat("a", 1, [], now), now)
    scheduler.enqueue(request(1), now)
    (lease,) = scheduler.dispatch(now).offers
    scheduler.lease_ended(lease.stream_seq, now + 10_000)  # service time is known: 10 s
    tight = request(2, deadline_ms=now + 12_000)
    scheduler.enqueue(request(3), now + 10_000)
    scheduler.dispatch(now + 10_000)
    assert scheduler.enqueue(tight, now + 10_000).queued


def test_running_request_past_its_deadline_is_adopted_not_failed() -> None:
    """Its worker stops it at the deadline and answers itself; the broker must not answer too."""
    scheduler = Scheduler(SchedulerLimits(), TERM_MS, adopt_before_ms=TERM_MS)
    now = TERM_MS + GRACE
    scheduler.heartbeat(beat("a", 1, [7], now), now)
    assert verdict(scheduler.enqueue(request(7, deadline_ms=now - 1), now)) is None
    assert scheduler.running("m") == 1 and not scheduler.tick(now + 1).rejections


def test_running_request_is_adopted_before_queue_limits_apply() -> None:
    scheduler = Scheduler(SchedulerLimits(max_queue=1), T0)
    now = T0 + GRACE
    scheduler.heartbeat(beat("a", 2, [7], now), now)
    scheduler.enqueue(request(1), now)
    assert verdict(scheduler.enqueue(request(7), now)) is None  # not queue_full: it runs
    assert scheduler.running("m") == 1
