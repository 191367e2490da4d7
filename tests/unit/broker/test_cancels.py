"""Cancels: the book remembers each until it ages out of `IRIS_CANCELS`; the leader withdraws a lease for
a cancelled request before its offer, however the request got back to the queue (a cancel racing an
offer that was then refused)."""

from __future__ import annotations

from broker.cancels import withdraw_cancelled
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
    scheduler, now = ready_scheduler({"a": 1})
    book = CancelBook()
    scheduler.admit(request(1), now)
    scheduler.admit(request(2), now)
    (lease,) = scheduler.dispatch(now)  # offered; the cancel comes in while the offer is in flight
    book.add(lease.request_id, now)
    assert scheduler.cancel_waiting(lease.request_id) is None  # not waiting: nothing to cancel yet
    scheduler.offer_refused(lease.stream_seq)  # the worker was full: back to the queue
    scheduler.heartbeat(beat("a", 1, [], now + 1), now + 1)
    offered, rejected = withdraw_cancelled(scheduler, scheduler.dispatch(now + 1), book)
    assert offered == [] and [r.request.stream_seq for r in rejected] == [1]
    assert rejected[0].code is ErrorCode.CANCELLED
    offered, _ = withdraw_cancelled(scheduler, scheduler.dispatch(now + 1), book)
    assert [lease.stream_seq for lease in offered] == [2]  # the withdrawn lease freed its slot


def test_withdrawn_lease_teaches_no_service_time() -> None:
    scheduler, now = ready_scheduler({"a": 1})
    book = CancelBook()
    book.add("r1", now)
    scheduler.admit(request(1), now)
    withdraw_cancelled(scheduler, scheduler.dispatch(now), book)
    pool = scheduler.pools["m"]
    assert pool.completed == 0 and scheduler.running("m") == 0 and not scheduler.knows(1)
