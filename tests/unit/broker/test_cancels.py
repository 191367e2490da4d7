"""Cancels: the book remembers each until it ages out of `IRIS_CANCELS`; the leader withdraws a lease for
a cancelled request before its offer, however the request got back to the queue (a cancel racing an
offer that was then refused)."""

from __future__ import annotations

from broker.core.decisions import Decisions
from schemas.cancels import CancelBook
from schemas.errors import ErrorCode
from tests.unit.builders import beat, ready_scheduler, request

INBOX = "_INBOX.x"


def test_book_remembers_until_the_cancel_ages_out() -> None:
    book = CancelBook(memory_ms=1_000)
    book.add("r1", 10_000)
    book.add("r2", 10_500)
    book.forget_expired(10_999)
    assert book.cancelled("r1", INBOX) and book.cancelled("r2", INBOX)
    book.forget_expired(11_000)
    assert not book.cancelled("r1", INBOX) and book.cancelled("r2", INBOX) and len(book) == 1


def test_a_repeated_cancel_extends_its_memory() -> None:
    book = CancelBook(memory_ms=1_000)
    book.add("r1", 10_000)
    book.add("r1", 10_800)
    book.forget_expired(11_500)
    assert book.cancelled("r1", INBOX)
    book.forget_expired(11_800)
    assert not book.cancelled("r1", INBOX)


def test_an_owned_cancel_stops_only_its_owners_request() -> None:
    book = CancelBook()
    book.add("r1", 10_000, owner="bob")
    assert not book.cancelled("r1", "_INBOX.alice.x1") and book.cancelled("r1", "_INBOX.bob.x1")
    book.add("r1", 10_000)  # the plain iris.cancel.<id>: only publishers the accounts trust can send it
    assert book.cancelled("r1", "_INBOX.alice.x1")
    book.forget_expired(10_000 + book.memory_ms)
    assert len(book) == 0


def test_cancel_racing_a_refused_offer_is_withdrawn_before_the_next() -> None:
    book = CancelBook()
    scheduler, now = ready_scheduler({"a": 1}, cancelled=book.cancelled)
    scheduler.enqueue(request(1), now)
    scheduler.enqueue(request(2), now)
    (lease,) = scheduler.dispatch(now).offers  # offered; the cancel comes in while the offer is in flight
    book.add(lease.request_id, now)
    assert scheduler.cancel(lease.request_id, now) == Decisions()  # not waiting: nothing to cancel yet
    scheduler.offers_refused([lease.stream_seq])  # the worker was full: back to the queue
    scheduler.heartbeat(beat("a", 1, [], now + 1), now + 1)
    decisions = scheduler.dispatch(now + 1)
    assert decisions.offers == () and [r.request.stream_seq for r in decisions.rejections] == [1]
    assert decisions.rejections[0].code is ErrorCode.CANCELLED and decisions.rejections[0].delete_record
    assert [lease.stream_seq for lease in scheduler.dispatch(now + 1).offers] == [2]  # the slot is free again


def test_request_cancelled_before_it_was_indexed_never_waits() -> None:
    book = CancelBook()
    scheduler, now = ready_scheduler({"a": 1}, cancelled=book.cancelled)
    book.add("r1", now)
    (rejection,) = scheduler.enqueue(request(1), now).rejections
    assert rejection.code is ErrorCode.CANCELLED and not rejection.delete_record
    assert not scheduler.knows(1) and scheduler.waiting("m") == 0


def test_withdrawn_lease_teaches_no_service_time() -> None:
    book = CancelBook()
    scheduler, now = ready_scheduler({"a": 1}, cancelled=book.cancelled)
    scheduler.enqueue(request(1), now)
    book.add("r1", now)
    assert len(scheduler.dispatch(now).rejections) == 1
    pool = scheduler.pools["m"]
    assert pool.completed == 0 and scheduler.running("m") == 0 and not scheduler.knows(1)
