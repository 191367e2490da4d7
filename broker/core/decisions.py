"""What one scheduler event decided, as one value: the async shell applies it in one place
(`broker.term.Term.apply`) and unit tests assert on it.

Every `Scheduler` event method returns a `Decisions` (vLLM's `SchedulerOutput` is the model): the scheduler's
own state has already changed; these are the effects it leaves to the shell, each typed. Records are frozen;
`a + b` is both, in order, so a method that decides in steps sums what each step decided.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.core.queue import WaitingRequest
from schemas.errors import ErrorCode
from schemas.messages import Lease, LeaseDone


@dataclass(frozen=True, slots=True)
class Rejection:
    """A typed error for the request's client, after which the request leaves the stream."""

    request: WaitingRequest
    code: ErrorCode
    message: str
    retry_after_s: float | None = None
    delete_record: bool = True  # it may have run before: a stale lease record of that attempt goes too


@dataclass(frozen=True, slots=True)
class Queued:
    """A request now waits in its model's queue: its client hears its place (a ticket waits silently)."""

    request: WaitingRequest
    position: int
    eta_s: float


@dataclass(frozen=True, slots=True)
class QueueNotice:
    """A waiting request is due a `QueueUpdate` (`broker.core.queue_updates`)."""

    stream_seq: int
    reply_to: str
    request_id: str
    position: int
    eta_s: float


@dataclass(frozen=True, slots=True)
class Requeued:
    """A lost lease is back in the queue with `request.attempt` counting the workers tried."""

    request: WaitingRequest
    worker_id: str
    why: str


@dataclass(frozen=True, slots=True)
class TicketEnded:
    """A ticket's slot is free: its stream message and record go."""

    lease: Lease
    why: str


@dataclass(frozen=True, slots=True)
class Finished:
    """A lease ended with its answer sent (usage reported): what the metrics count."""

    done: LeaseDone
    priority: int


@dataclass(frozen=True, slots=True)
class Decisions:
    queued: tuple[Queued, ...] = ()
    offers: tuple[Lease, ...] = ()  # worker leases: recorded, then offered to their worker (one offer per worker)
    tickets: tuple[Lease, ...] = ()  # granted tickets: recorded, then sent to the app that waits
    rejections: tuple[Rejection, ...] = ()
    requeued: tuple[Requeued, ...] = ()
    dead_letters: tuple[WaitingRequest, ...] = ()  # lost on `max_attempts` workers in a row: to `IRIS_DLQ`
    tickets_ended: tuple[TicketEnded, ...] = ()
    notices: tuple[QueueNotice, ...] = ()
    finished: tuple[Finished, ...] = ()
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
            self.round_due or other.round_due,
        )


NOTHING = Decisions()
ROUND_DUE = Decisions(round_due=True)


def cancelled(request: WaitingRequest, when: str, *, delete_record: bool = True) -> Rejection:
    return Rejection(request, ErrorCode.CANCELLED, f"cancelled by the client {when}", delete_record=delete_record)
