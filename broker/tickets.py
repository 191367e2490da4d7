"""Tickets: apps that call their own model server ask Iris for a slot (Aperture `startFlow`/`end`).

`iris.admit.<model>` (nats micro service `iris-admit`) takes an `AdmitRequest` and publishes it to the
request stream as a *ticket request* (header `Iris-Admission: 1`; the body is never read by a worker).
So it waits in the same fair queue, under the same limits, as every request for that model, and a waiting
ticket request survives a broker restart exactly as a request does (rebuilt from the stream, deduplicated
by its ticket id). When the scheduler grants it, the ticket is recorded like a lease in `IRIS_LEASES`
(`Lease.ticket`, no worker) before the app hears of it, so a restarted or standby broker restores it with
its cut-off; then the waiting request/reply gets the `Ticket`. The app releases it on `iris.admit.end`:
whichever broker answers deletes the stream message and the record, and the leader frees the slot when
its lease watch sees the delete, as when a worker ends a lease. An app that vanishes loses the ticket at
its cut-off (`max_inflight`), which the leader expires the same way. A ticket request's one answer is the
`Ticket` or a typed `Error` (invalid_request, queue_full, deadline_unmeetable, deadline_exceeded, no_capacity).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service
from nats.nuid import NUID

from runtime.clock import now_ms
from runtime.exchange import RequestEnvelope, publish_request
from runtime.stream_ops import delete_request, publish_reply
from schemas import headers as h
from schemas.errors import DuplicateRequest, InvalidRequest, IrisError
from schemas.messages import (
    AdmitEnd,
    AdmitEnded,
    AdmitRequest,
    Error,
    Lease,
    LeaseDone,
    LeasesDone,
    Ticket,
    admit_end_decoder,
    admit_request_decoder,
    encoder,
    lease_decoder,
)
from schemas.reply_subjects import reply_problem
from schemas.subjects import ADMIT_END, ADMIT_FILTER, admitted_model, cancel_subject, done_subject, is_token, lease_key

SERVICE_NAME = "iris-admit"
SERVICE_VERSION = "0.1.0"
END_QUEUE_GROUP = "iris-admit-end"  # not micro's shared "q": `iris.admit.*` also matches the end subject
_NUID = NUID()


class TicketService:
    def __init__(self, nc: NATS, kv: KeyValue, log: structlog.stdlib.BoundLogger) -> None:
        self.nc, self.kv, self.log = nc, kv, log
        self._service: Service | None = None
        self._handling: set[asyncio.Task[None]] = set()  # requests in progress, so one slow one blocks no other

    async def start(self) -> None:
        self._service = await add_service(
            self.nc, name=SERVICE_NAME, version=SERVICE_VERSION, description="Iris admission: slots for your own model"
        )
        on_request = self._concurrently(self._on_ticket_request)
        await self._service.add_endpoint(name="admit", subject=ADMIT_FILTER, handler=on_request)
        await self._service.add_endpoint(
            name="end", subject=ADMIT_END, queue_group=END_QUEUE_GROUP, handler=self._concurrently(self._on_release)
        )
        await self.nc.flush()  # subscribed at the server once start returns

    async def stop(self) -> None:
        if self._service is not None:
            service, self._service = self._service, None
            await service.stop()
        for task in list(self._handling):
            task.cancel()
        await asyncio.gather(*self._handling, return_exceptions=True)

    def _concurrently(self, handle: Callable[[Request], Awaitable[None]]) -> Callable[[Request], Awaitable[None]]:
        """NATS runs one subscription's callbacks one after another; each request gets its own task."""

        async def spawn(req: Request) -> None:
            problem = reply_problem(_reply_subject(req), None)
            if problem is not None:  # the broker's answer would land wherever the caller said, with its rights
                self.log.warning("ticket request ignored: its reply subject " + problem, subject=req.subject)
                return
            task = asyncio.create_task(self._logged(handle, req))
            self._handling.add(task)
            task.add_done_callback(self._handling.discard)

        return spawn

    async def _logged(self, handle: Callable[[Request], Awaitable[None]], req: Request) -> None:
        try:
            await handle(req)
        except Exception:
            self.log.exception("ticket request failed", subject=req.subject)

    async def grant(self, lease: Lease) -> None:
        """Record the ticket, then tell the app that waits for it."""
        await self.kv.put(lease_key(lease.stream_seq), encoder.encode(lease))
        ticket = Ticket(
            ticket_id=lease.request_id,
            model=lease.model,
            workload=lease.workload,
            stream_seq=lease.stream_seq,
            granted_ms=lease.leased_ms,
            expires_ms=lease.cutoff_ms,
        )
        await publish_reply(self.nc, lease.reply_to, lease.request_id, ticket, owner=lease.owner or None)
        self.log.info("ticket granted", seq=lease.stream_seq, ticket_id=lease.request_id, model=lease.model)

    async def end(self, lease: Lease, why: str) -> None:
        """A ticket is over: the stream message first, then the record (a crash between leaves a record
        that expires at its cut-off, never a ticket request that would be granted again)."""
        await delete_request(self.nc, lease.stream_seq)
        await self.kv.delete(lease_key(lease.stream_seq))
        self.log.info("ticket ended", seq=lease.stream_seq, ticket_id=lease.request_id, why=why)

    async def _on_ticket_request(self, req: Request) -> None:
        if req.subject == ADMIT_END:
            return  # the end endpoint answers it
        reply_to = _reply_subject(req)
        if not reply_to:
            self.log.warning("ticket request without a reply subject ignored", subject=req.subject)
            return
        try:
            envelope = _ticket_request_envelope(admitted_model(req.subject), req.data, reply_to)
            if await publish_request(self.nc, envelope):
                raise DuplicateRequest(f"ticket id {envelope.request_id!r} was already used")
        except IrisError as exc:
            await _respond_error(req, exc)

    async def _on_release(self, req: Request) -> None:
        try:
            end = admit_end_decoder.decode(req.data)
            released = bool(end.stream_seq) and await self._release_recorded(end)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            await _respond_error(req, InvalidRequest(f"invalid admission end: {exc}"))
            return
        except IrisError as exc:
            await _respond_error(req, exc)
            return
        if not released:  # still waiting, or granted a moment ago: the leader withdraws or releases it by id
            await self.nc.publish(cancel_subject(end.ticket_id), b"")
        await req.respond(encoder.encode(AdmitEnded(released=released)))

    async def _release_recorded(self, end: AdmitEnd) -> bool:
        try:
            entry = await self.kv.get(lease_key(end.stream_seq))
        except NotFoundError:
            return False
        if not entry.value:
            return False
        lease = lease_decoder.decode(entry.value)
        if not lease.ticket or lease.request_id != end.ticket_id:
            raise InvalidRequest(f"stream_seq {end.stream_seq} does not hold ticket {end.ticket_id!r}")
        await self.end(lease, "released")
        # The leader hears the ticket's end as it hears a worker's lease ends; tokens when the app gave them.
        completed = bool(end.prompt_tokens or end.completion_tokens)
        usage = LeaseDone(
            lease.stream_seq, lease.model, lease.workload, end.prompt_tokens, end.completion_tokens, completed
        )
        await self.nc.publish(done_subject(lease.model), encoder.encode(LeasesDone([usage])))
        return True


def _ticket_request_envelope(model: str, data: bytes, reply_to: str) -> RequestEnvelope:
    """Validate an `AdmitRequest` and build its stream message; `InvalidRequest` names what is wrong."""
    if not is_token(model):
        raise InvalidRequest(f"model in the subject must match [A-Za-z0-9_-]+, got {model[:40]!r}")
    try:
        admit = admit_request_decoder.decode(data or b"{}")
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidRequest(f"invalid admission request: {exc}") from None
    now = now_ms()
    deadline_ms = now + int(admit.deadline_s * 1000)
    ticket_id = admit.ticket_id or _NUID.next().decode()
    headers = {
        h.REPLY_TO: reply_to,
        h.DEADLINE: str(deadline_ms),
        h.PRIORITY: str(admit.priority),
        h.MSG_ID: ticket_id,
        h.MSG_TTL: h.ttl_header(deadline_ms, now),
        h.ADMISSION: "1",
    }
    if admit.user:
        headers[h.USER] = admit.user
    if admit.tokens:
        headers[h.TOKENS] = str(admit.tokens)
    body = encoder.encode(AdmitRequest(**{**msgspec.structs.asdict(admit), "ticket_id": ticket_id}))
    return RequestEnvelope(model, admit.workload, body, headers, deadline_ms)


def _reply_subject(req: Request) -> str:
    return req._msg.reply  # micro's Request has no public accessor; the answer comes later, from the grant


async def _respond_error(req: Request, exc: IrisError) -> None:
    body = encoder.encode(Error(code=exc.code.value, message=exc.message, retry_after_s=exc.retry_after_s))
    await req.respond_error(str(exc.http_status), exc.message, data=body, headers={h.KIND: h.KIND_ERROR})
