"""One scheduling round's leases for one worker, on the wire: their records in `IRIS_LEASES`, then one
`LeaseOffer` request. The records go out before the offer (one connection keeps order), in order, and only
the last is acknowledged. Should the broker die before they are stored, its successor still adopts each
lease from the worker's heartbeat, which lists it as running.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import structlog
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from schemas.messages import Lease, LeaseOffer, encoder, lease_answer_decoder
from schemas.subjects import lease_offer_subject, lease_record_subject


@dataclass(frozen=True)
class OfferOutcome:
    worker_gone: bool = False  # no one answers on the worker's subject
    timed_out: bool = False  # it may have accepted: its heartbeats decide (lease_confirm_ms), none runs twice
    not_accepted: list[int] = field(default_factory=list)  # back to the queue, same attempt


async def offer_leases(
    nc: NATS, worker_id: str, leases: list[Lease], timeout_s: float, log: structlog.stdlib.BoundLogger
) -> OfferOutcome:
    records = [(lease_record_subject(lease.stream_seq), encoder.encode(lease)) for lease in leases]
    for subject, payload in records[:-1]:
        await nc.publish(subject, payload)
    recorded = asyncio.ensure_future(nc.jetstream().publish(*records[-1]))
    seqs = [lease.stream_seq for lease in leases]
    try:
        reply = await nc.request(lease_offer_subject(worker_id), encoder.encode(LeaseOffer(leases)), timeout=timeout_s)
    except NoRespondersError:
        log.warning("worker gone", worker=worker_id, leases=seqs)
        return OfferOutcome(worker_gone=True)
    except NatsTimeout:
        log.warning("lease offer timed out", worker=worker_id, leases=seqs)
        return OfferOutcome(timed_out=True)
    finally:
        try:
            await recorded
        except Exception as exc:
            log.error("lease records failed", worker=worker_id, leases=seqs, error=str(exc))
    accepted = set(lease_answer_decoder.decode(reply.data).accepted)
    return OfferOutcome(not_accepted=[seq for seq in seqs if seq not in accepted])
