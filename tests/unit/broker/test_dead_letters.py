"""Dead letters without a server: the scheduler's give-up decision, and the dead-letter and replay headers."""

from __future__ import annotations

from broker.core.queue import WaitingRequest
from broker.core.scheduler import Scheduler, SchedulerLimits
from schemas import headers as h
from schemas.dead_letters import dead_letter_headers, read_dead_letter, replay_headers
from schemas.errors import ErrorCode
from schemas.messages import StoredRequest
from schemas.subjects import dead_letter_subject
from tests.unit.builders import GRACE, T0, beat, ready_scheduler, request


def crash_each_worker(
    scheduler: Scheduler, workers: list[str], now: int
) -> tuple[list[int], list[WaitingRequest], int]:
    """Lease request 1, let the worker running it die, `len(workers)` times; the attempts it was requeued with,
    and the dead letters the ticks decided."""
    requeued_attempts: list[int] = []
    dead: list[WaitingRequest] = []
    for worker in workers:
        alive = {w: 1 for w in workers if w != worker}
        scheduler.heartbeat(beat(worker, 1, [], now), now)
        (lease,) = scheduler.dispatch(now).offers
        assert lease.worker_id == worker
        now += scheduler.limits.worker_timeout_ms + 1
        for other in alive:
            scheduler.heartbeat(beat(other, 0, [], now), now)  # alive, but with no slot to take the retry
        decisions = scheduler.tick(now)
        requeued_attempts += [r.request.attempt for r in decisions.requeued]
        dead += decisions.dead_letters
    return requeued_attempts, dead, now


def test_request_lost_on_max_attempts_workers_in_a_row_is_a_dead_letter() -> None:
    scheduler = Scheduler(SchedulerLimits(max_attempts=3), T0)
    now = T0 + GRACE
    scheduler.enqueue(request(1), now)
    requeued_attempts, dead_letters, now = crash_each_worker(scheduler, ["w1", "w2", "w3"], now)
    assert requeued_attempts == [2, 3]  # back to the queue twice, the third loss gives up
    (dead,) = dead_letters
    assert dead.stream_seq == 1 and dead.attempt == 3 and dead.reply_to == "_INBOX.1"
    assert not scheduler.knows(1) and scheduler.waiting("m") == 0 and scheduler.running("m") == 0
    scheduler.heartbeat(beat("w4", 1, [], now), now)
    assert scheduler.dispatch(now).offers == ()  # never offered again


def test_fewer_losses_than_max_attempts_keep_the_request() -> None:
    scheduler = Scheduler(SchedulerLimits(max_attempts=3), T0)
    now = T0 + GRACE
    scheduler.enqueue(request(1), now)
    requeued_attempts, dead_letters, now = crash_each_worker(scheduler, ["w1", "w2"], now)
    assert requeued_attempts == [2, 3] and dead_letters == []
    scheduler.heartbeat(beat("w3", 1, [], now), now)
    (lease,) = scheduler.dispatch(now).offers
    assert lease.attempt == 3
    assert scheduler.lease_ended(1, now + 5).dead_letters == ()  # the third worker finished it


def test_max_attempts_one_gives_up_on_the_first_loss() -> None:
    scheduler = Scheduler(SchedulerLimits(max_attempts=1), T0)
    now = T0 + GRACE
    scheduler.enqueue(request(1), now)
    requeued_attempts, dead_letters, _ = crash_each_worker(scheduler, ["w1"], now)
    assert requeued_attempts == []
    assert [d.attempt for d in dead_letters] == [1]


def test_an_offer_that_finds_its_worker_gone_is_no_attempt() -> None:
    scheduler = Scheduler(SchedulerLimits(max_attempts=1), T0)
    now = T0 + GRACE
    scheduler.heartbeat(beat("w1", 2, [], now), now)
    scheduler.enqueue(request(1), now)
    scheduler.enqueue(request(2), now)
    running, offered = scheduler.dispatch(now).offers
    decisions = scheduler.worker_gone("w1", now + 1, offered=[offered.stream_seq])
    assert decisions.requeued == ()  # the offered one went back with its attempt
    assert [d.stream_seq for d in decisions.dead_letters] == [running.stream_seq]  # the running one was lost
    scheduler.heartbeat(beat("w2", 1, [], now + 2), now + 2)
    (again,) = scheduler.dispatch(now + 2).offers
    assert again.stream_seq == offered.stream_seq and again.attempt == 1


def stored(headers: dict[str, str]) -> StoredRequest:
    return StoredRequest(42, "iris.req.fake.batch", headers, b'{"prompt": "POISON"}', T0)


def test_dead_letter_keeps_the_original_headers_and_says_why() -> None:
    original = {
        h.REPLY_TO: "_INBOX.x",
        h.DEADLINE: str(T0 + 30_000),
        h.MSG_ID: "order-7",
        h.MSG_TTL: "30",
        "Nats-Sequence": "42",
        h.PRIORITY: "5",
    }
    headers = dead_letter_headers(stored(original), ErrorCode.WORKER_FAILED, "failed\non 3 workers", 3, T0 + 9)
    assert headers[h.REPLY_TO] == "_INBOX.x" and headers[h.PRIORITY] == "5"
    assert h.MSG_TTL not in headers and "Nats-Sequence" not in headers  # JetStream's own headers stay behind
    assert headers[h.MSG_ID] == "dead-42"  # a second move of request 42 is a duplicate in IRIS_DLQ
    dead = read_dead_letter(5, headers)
    assert (dead.dlq_seq, dead.request_id, dead.code, dead.attempts) == (5, "order-7", "worker_failed", 3)
    assert (dead.model, dead.workload, dead.stream_seq, dead.dead_ms) == ("fake", "batch", 42, T0 + 9)
    assert dead.reason == "failed?on 3 workers"  # one header line


def test_replay_gets_a_new_id_and_a_deadline_as_long_as_the_first() -> None:
    original = {h.REPLY_TO: "_INBOX.x", h.DEADLINE: str(T0 + 30_000), h.MSG_ID: "order-7", h.PRIORITY: "5"}
    dead = dead_letter_headers(stored(original), ErrorCode.WORKER_FAILED, "failed", 3, T0 + 9)
    later = T0 + 3_600_000
    again = replay_headers(dead, 5, later)
    assert again[h.MSG_ID] == "order-7-replay-5" and again[h.PRIORITY] == "5" and again[h.REPLY_TO] == "_INBOX.x"
    assert again[h.DEADLINE] == str(later + 30_000) and again[h.MSG_TTL] == "30"
    assert not any(k.startswith("Iris-Dead-") for k in again)
    assert replay_headers(dead, 5, later, deadline_s=10)[h.DEADLINE] == str(later + 10_000)


def test_replay_leaves_a_bad_deadline_as_it_was() -> None:
    original = {h.REPLY_TO: "_INBOX.x", h.DEADLINE: "soon"}
    dead = dead_letter_headers(stored(original), ErrorCode.INVALID_REQUEST, "bad deadline", 0, T0)
    again = replay_headers(dead, 6, T0 + 1)
    assert again[h.DEADLINE] == "soon" and again[h.MSG_ID] == "42-replay-6"


def test_dead_letter_subject_keeps_model_and_workload() -> None:
    assert dead_letter_subject("iris.req.fake.batch") == "iris.dlq.fake.batch"
    assert dead_letter_subject("iris.req.fa$ke.b") == "iris.dlq.fa_ke.b"
    assert dead_letter_subject("iris.req.x") == "iris.dlq._._"


def test_a_lease_its_worker_stopped_listing_is_a_dead_letter_of_that_heartbeat() -> None:
    """The heartbeat that loses the lease decides the dead letter: it is in that event's `Decisions`."""
    scheduler, now = ready_scheduler({"w1": 1}, limits=SchedulerLimits(max_attempts=1))
    scheduler.enqueue(request(1), now)
    (lease,) = scheduler.dispatch(now).offers
    late = now + scheduler.limits.lease_confirm_ms + 1
    decisions = scheduler.heartbeat(beat("w1", 1, [], late), late)
    assert [d.stream_seq for d in decisions.dead_letters] == [lease.stream_seq] and decisions.requeued == ()
    assert not scheduler.knows(lease.stream_seq) and scheduler.tick(late).dead_letters == ()
