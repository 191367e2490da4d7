"""Where the leader applies the cancels it has read (`schemas.cancels.CancelBook`): a request indexed after
its cancel never waits, and a lease for a cancelled request is withdrawn before its offer, whichever way
it got there (dispatched before the cancel came in and then refused, re-queued from a dead worker).
A running request is the worker's to stop; it reads the same cancels."""

from __future__ import annotations

from broker.pool import waiting_from
from broker.queue import WaitingRequest
from broker.scheduler import Rejection, Scheduler
from schemas.cancels import CancelBook
from schemas.errors import ErrorCode
from schemas.messages import Lease


def cancelled_rejection(request: WaitingRequest, when: str) -> Rejection:
    return Rejection(request, ErrorCode.CANCELLED, f"cancelled by the client {when}")


def withdraw_cancelled(
    scheduler: Scheduler, leases: list[Lease], book: CancelBook
) -> tuple[list[Lease], list[Rejection]]:
    """Split a round's leases into those to offer and the rejections of those whose request was cancelled
    (withdrawn from the scheduler: their slots are free for the next round)."""
    offered: list[Lease] = []
    rejected: list[Rejection] = []
    for lease in leases:
        if book.cancelled(lease.request_id, lease.reply_to) and scheduler.withdraw(lease.stream_seq) is not None:
            rejected.append(cancelled_rejection(waiting_from(lease, lease.attempt), "before it started"))
        else:
            offered.append(lease)
    return offered, rejected
