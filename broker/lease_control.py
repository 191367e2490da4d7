"""Suspend and resume orders on the wire: one `LeaseControl` request per worker per round, answered by a
`LeaseControlAnswer` once the worker has really suspended (or resumed) the leases. No answer in time
means none is known: the scheduler then goes by the worker's heartbeats, which list its suspended leases.
"""

from __future__ import annotations

import structlog
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from schemas.messages import LeaseControl, LeaseControlAnswer, encoder, lease_control_answer_decoder
from schemas.subjects import lease_control_subject


async def send_lease_control(
    nc: NATS, worker_id: str, order: LeaseControl, timeout_s: float, log: structlog.stdlib.BoundLogger
) -> LeaseControlAnswer | None:
    subject = lease_control_subject(worker_id)
    try:
        reply = await nc.request(subject, encoder.encode(order), timeout=timeout_s)
        return lease_control_answer_decoder.decode(reply.data)
    except (NoRespondersError, NatsTimeout) as exc:
        log.warning("lease control order unanswered", worker=worker_id, order=str(order), error=type(exc).__name__)
    except Exception as exc:
        log.warning("bad lease control answer", worker=worker_id, error=str(exc))
    return None
