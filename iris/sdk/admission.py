"""Admission from the SDK: a slot in Iris's fair queue for a model the app calls itself.

    async with client.admit(model="mistral", workload="chat", priority=5, user="alice", deadline_s=30) as ticket:
        answer = await call_my_model_server(...)

Entering waits in the same fair queue as requests for that model (`iris.admit.<model>`) and returns the
`Ticket`; leaving releases it (`iris.admit.end`). Waiting past the deadline raises `DeadlineExceeded`; a
full queue `QueueFull`, an estimated wait past the deadline `DeadlineUnmeetable` (both with
`retry_after_s`); a model nobody can admit for `NoCapacity`. Given up or cancelled while waiting, the
admission is withdrawn. A ticket that is never released expires at the model's `max_inflight`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TypedDict

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.nuid import NUID

from runtime.connection import connection_owner
from schemas import headers as h
from schemas.errors import DeadlineExceeded, ErrorCode, InvalidRequest, IrisError, NoCapacity
from schemas.messages import (
    AdmitEnd,
    AdmitEnded,
    AdmitRequest,
    Ticket,
    admit_end_decoder,
    admit_ended_decoder,
    admit_request_decoder,
    encoder,
    error_decoder,
    ticket_decoder,
)
from schemas.subjects import ADMIT_END, admit_subject, cancel_subject, to_token

REPLY_GRACE_S = 5.0  # the broker answers deadline_exceeded itself; this only covers a broker that is gone
# "No responders" is retried this long: a broker that just (re)started or failed over, or a queue
# subscription the server has not spread yet (seen with nats-server 2.15 right after a flush).
NO_RESPONDERS_RETRY_S = 3.0
END_TIMEOUT_S = 5.0
_NUID = NUID()
log = logging.getLogger(__name__)


class Admission:
    """`async with` it for a `Ticket`; or `await acquire()` and `await release()` by hand."""

    def __init__(self, nc: NATS, model: str, request: AdmitRequest) -> None:
        self.nc, self.model, self.request = nc, model, request
        self.ticket: Ticket | None = None
        self._usage = (0, 0)

    @property
    def ticket_id(self) -> str:
        assert self.request.ticket_id is not None
        return self.request.ticket_id

    async def acquire(self) -> Ticket:
        """Wait in the fair queue for a ticket; withdrawn when this fails or is cancelled."""
        answered = False
        try:
            reply = await self._request_ticket()
            answered = True
        finally:
            if not answered and not self.nc.is_closed:
                # Withdraw, or free a late grant.
                await self.nc.publish(cancel_subject(self.ticket_id, connection_owner(self.nc)), b"")
        self.ticket = _ticket_from(reply)
        return self.ticket

    async def _request_ticket(self) -> Msg:
        timeout_s = self.request.deadline_s + REPLY_GRACE_S
        give_up = time.monotonic() + NO_RESPONDERS_RETRY_S
        pause_s = 0.05
        while True:
            try:
                return await self.nc.request(admit_subject(self.model), encoder.encode(self.request), timeout=timeout_s)
            except NoRespondersError:
                if time.monotonic() + pause_s > give_up:
                    raise NoCapacity("no Iris broker answers on iris.admit: is the broker running?", 1.0) from None
            except NatsTimeout:
                raise DeadlineExceeded(f"no ticket within the deadline ({self.request.deadline_s} s)") from None
            await asyncio.sleep(pause_s)
            pause_s = min(0.5, pause_s * 2)

    def report_usage(self, prompt_tokens: int, completion_tokens: int) -> None:
        """What the call really cost: sent with the release, so fairness charges actual tokens."""
        try:  # constructing a Struct does not check its bounds; decoding does
            admit_end_decoder.decode(encoder.encode(AdmitEnd("x", 0, prompt_tokens, completion_tokens)))
        except msgspec.ValidationError as exc:
            raise InvalidRequest(f"invalid usage: {exc}") from None
        self._usage = (prompt_tokens, completion_tokens)

    async def release(self) -> bool:
        """Give the slot back; False when the ticket had already expired (or was never granted)."""
        if self.ticket is None:
            return False
        ticket, self.ticket = self.ticket, None
        end = AdmitEnd(ticket.ticket_id, ticket.stream_seq, *self._usage)
        reply = await self.nc.request(ADMIT_END, encoder.encode(end), timeout=END_TIMEOUT_S)
        if (reply.headers or {}).get(h.KIND) == h.KIND_ERROR:
            raise _error_from(reply.data)
        ended: AdmitEnded = admit_ended_decoder.decode(reply.data)
        return ended.released

    async def __aenter__(self) -> Ticket:
        return await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        try:
            await asyncio.shield(self.release())
        except (NatsTimeout, NoRespondersError) as error:  # the ticket still ends, at its cut-off
            log.warning("ticket %s not released (%r); it expires at its cut-off", self.ticket_id, error)


class AdmissionLabels(TypedDict, total=False):
    """The labels `admission` takes besides the model (what `Client.admit` passes on)."""

    workload: str
    priority: int
    user: str | None
    tokens: int | None
    deadline_s: float
    ticket_id: str | None


def admission(
    nc: NATS,
    *,
    model: str,
    workload: str = "default",
    priority: int = 1,
    user: str | None = None,
    tokens: int | None = None,
    deadline_s: float = h.DEFAULT_DEADLINE_S,
    ticket_id: str | None = None,
) -> Admission:
    """Validate the labels at once (`InvalidRequest` names the field) and build the admission."""
    fields = {
        "workload": to_token(workload),
        "priority": priority,
        "user": to_token(user) if user else None,
        "tokens": tokens,
        "deadline_s": deadline_s,
        "ticket_id": to_token(ticket_id) if ticket_id else _NUID.next().decode(),
    }
    try:
        request = admit_request_decoder.decode(encoder.encode(fields))
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"invalid admission: {exc}") from None
    return Admission(nc, to_token(model), request)


def _ticket_from(reply: Msg) -> Ticket:
    if (reply.headers or {}).get(h.KIND) == h.KIND_ERROR:
        raise _error_from(reply.data)
    return ticket_decoder.decode(reply.data)


def _error_from(data: bytes) -> IrisError:
    error = error_decoder.decode(data)
    return IrisError.from_wire(ErrorCode(error.code), error.message, error.retry_after_s)
