"""Intake: a stream message's subject and headers (all a headers-only consumer sees) become the compact
`WaitingRequest` the scheduler indexes, or an `InvalidRequest` naming what is wrong. No prompt text is
read here; the prompt's size comes from the `Nats-Msg-Size` header."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from broker.core.queue import WaitingRequest
from broker.core.wfq import estimate_prompt_tokens
from schemas import headers as h
from schemas.errors import InvalidRequest
from schemas.headers import MAX_DEADLINE_S, parse_request_headers
from schemas.reply_subjects import DEFAULT_REPLY_PREFIXES
from schemas.subjects import is_token, parse_request_subject, request_owner


def waiting_request(
    subject: str,
    headers: dict[str, str],
    seq: int,
    stored_ms: int,
    now_ms: int,
    reply_prefixes: Sequence[str] = DEFAULT_REPLY_PREFIXES,
    max_deadline_s: float = MAX_DEADLINE_S,
) -> WaitingRequest:
    """Raises `InvalidRequest` for a bad subject or header, a reply subject outside `reply_prefixes` (or,
    for an owned subject, outside its owner's inbox) included. `max_deadline_s`: the longest deadline
    accepted, counted from when the request was stored; the broker passes its dedupe window, so a retry
    with the same id within the deadline never runs twice."""
    parts = parse_request_subject(subject)
    owner = request_owner(subject)
    if parts is None or not all(is_token(p) for p in (*parts, owner or "_")):
        raise InvalidRequest(
            f"subject {subject[:200]!r} is not iris.req.<model>.<workload>[.<owner>] with [A-Za-z0-9_-] tokens"
        )
    labels = parse_request_headers(headers, now_ms, fallback_id=str(seq), owner=owner, reply_prefixes=reply_prefixes)
    if labels.deadline_ms - stored_ms > max_deadline_s * 1000:
        raise InvalidRequest(
            f"header {h.DEADLINE} is more than {max_deadline_s:.0f} s after the request was published"
            " (the broker's dedupe window: a retry after it could run twice)"
        )
    return WaitingRequest(
        stream_seq=seq,
        request_id=labels.request_id,
        model=sys.intern(parts[0]),  # one string per model and workload, not one per waiting request
        workload=sys.intern(parts[1]),
        reply_to=labels.reply_to,
        deadline_ms=labels.deadline_ms,
        enqueued_ms=stored_ms,
        priority=labels.priority,
        user=labels.user,
        end_user=labels.end_user,
        cost_tokens=labels.cost_tokens,
        prompt_tokens_est=estimate_prompt_tokens(body_bytes(headers)),
        ticket=headers.get(h.ADMISSION) == "1",
        owner=sys.intern(owner) if owner else "",  # one string per owner, not per request
    )


def body_bytes(headers: dict[str, str]) -> int:
    """Body size as a headers-only consumer reports it."""
    try:
        return int(headers.get(h.NATS_MSG_SIZE, "0"))
    except ValueError:
        return 0
