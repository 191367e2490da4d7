"""What one scheduler event decided, as one value: the async shell applies it in one place
(`broker.term.Term.apply`) and unit tests assert on it.

Every `Scheduler` event method returns a `Decisions` (vLLM's `SchedulerOutput` is the model): the scheduler's
own state has already changed; these are the effects it leaves to the shell, each typed. Records are frozen
msgspec Structs (built in C: a round builds several);
`a + b` is both, in order, so a method that decides in steps sums what each step decided.
"""

from __future__ import annotations

import msgspec

from broker.core.queue import WaitingRequest
from schemas.errors import ErrorCode
from schemas.messages import Lease, LeaseDone


class Rejection(msgspec.Struct, frozen=True):
    """A typed error for the request's client, after which the request leaves the stream."""

    request: WaitingRequest
    code: ErrorCode
    message: str
    retry_after_s: float | None = None
    delete_record: bool = True  # it may have run before: a stale lease record of that attempt goes too


class Queued(msgspec.Struct, frozen=True):
    """A request now waits in its model's queue: its client hears its place (a ticket waits silently)."""

    request: WaitingRequest
    position: int
    eta_s: float


class QueueNotice(msgspec.Struct, frozen=True):
    """A waiting request is due a `QueueUpdate` (`broker.core.queue_updates`)."""

    stream_seq: int
    reply_to: str
    request_id: str
    position: int
    eta_s: float


class Requeued(msgspec.Struct, frozen=True):
    """A lost lease is back in the queue with `request.attempt` counting the workers tried."""

    request: WaitingRequest
    worker_id: str
    why: str


class TicketEnded(msgspec.Struct, frozen=True):
    """A ticket's slot is free: its stream message and record go."""

    lease: Lease
    why: str


class Finished(msgspec.Struct, frozen=True):
    """A lease ended with its answer sent (usage reported): what the metrics count."""

    done: LeaseDone
    priority: int


class Decisions(msgspec.Struct, frozen=True):
    queued: tuple[Queued, ...] = ()
    offers: tuple[Lease, ...] = ()  # worker leases: recorded, then offered to their worker (one offer per worker)
    tickets: tuple[Lease, ...] = ()  # granted tickets: recorded, then sent to the app that waits
    rejections: tuple[Rejection, ...] = ()
    requeued: tuple[Requeued, ...] = ()
    dead_letters: tuple[WaitingRequest, ...] = ()  # lost on `max_attempts` workers in a row: to `IRIS_DLQ`
    tickets_ended: tuple[TicketEnded, ...] = ()
    notices: tuple[QueueNotice, ...] = ()
    finished: tuple[Finished, ...] = ()
    suspends: tuple[Lease, ...] = ()  # running leases their workers are to suspend (preemption)
    resumes: tuple[Lease, ...] = ()  # suspended leases their workers are to resume
    round_due: bool = False  # capacity or the queue changed: a scheduling round is due

    def __add__(self, other: Decisions) -> Decisions:
        return Decisions(
            self.queued + other.queued,
            self.offers + other.offers,
            self.tickets + other.tickets,
            self.rejections + other.rejections,
            self.requeued + other.requeued,
            self.dead_letters + other.dead_letters,
            self.tickets_ended + other.tickets_ended,
            self.notices + other.notices,
            self.finished + other.finished,
            self.suspends + other.suspends,
            self.resumes + other.resumes,
            self.round_due or other.round_due,
        )


NOTHING = Decisions()
ROUND_DUE = Decisions(round_due=True)


def cancelled(request: WaitingRequest, when: str, *, delete_record: bool = True) -> Rejection:
    return Rejection(request, ErrorCode.CANCELLED, f"cancelled by the client {when}", delete_record=delete_record)


def rejected(rejection: Rejection) -> Decisions:
    """The decisions of an event whose only outcome is one rejection."""
    return Decisions(rejections=(rejection,))
