"""Dead letters: requests Iris gave up on, kept with their reason in stream `IRIS_DLQ`.

A request that failed on `max_attempts` workers in a row (a poison prompt that crashes them) or that cannot
be parsed moves here, its original headers and body unchanged next to `Iris-Dead-*` headers that say why.
The move keeps an order that loses nothing: the dead letter is stored and acknowledged first, then the
client gets its typed error, then the request leaves `IRIS_REQUESTS`. A crash between the steps leaves the
request in both streams, never in neither, and the dead letter's `Nats-Msg-Id` (the request's sequence)
makes a second move of the same request a no-op. A replay republishes the original under a new id with a
fresh deadline as long as its first one. This module is the record; the move itself is
`runtime.dead_letters.move_to_dlq`.
"""

from __future__ import annotations

import msgspec

from schemas import headers as h
from schemas.errors import ErrorCode, IrisError
from schemas.headers import MAX_DEADLINE_S, ttl_header
from schemas.messages import StoredRequest
from schemas.subjects import MAX_TOKEN_CHARS, parse_request_subject, request_owner, to_token

MAX_REASON_CHARS = 500
_JETSTREAM_PREFIX = "nats-"  # headers JetStream sets or acts on: never copied into or out of a dead letter


class DeadLetterError(IrisError):
    """A dead letter could not be stored; the request stays in `IRIS_REQUESTS` until its `Nats-TTL`."""


class DeadLetter(msgspec.Struct, frozen=True):
    """What `iris dlq ls` shows of one dead letter: its labels and reason, never the prompt."""

    dlq_seq: int
    request_id: str
    subject: str
    code: str
    reason: str
    attempts: int
    stream_seq: int
    dead_ms: int
    stored_ms: int
    model: str
    workload: str


def header_value(value: str, limit: int = MAX_REASON_CHARS) -> str:
    """A header value that survives the wire: printable, one line, bounded."""
    return "".join(c if c.isprintable() else "?" for c in value[:limit])


def dead_letter_headers(
    stored: StoredRequest, code: ErrorCode, reason: str, attempts: int, now_ms: int
) -> dict[str, str]:
    """The original request's own headers (less JetStream's) plus the `Iris-Dead-*` record."""
    kept = {k: v for k, v in stored.headers.items() if not k.lower().startswith(_JETSTREAM_PREFIX)}
    record = {
        h.DEAD_CODE: code.value,
        h.DEAD_REASON: header_value(reason),
        h.DEAD_SUBJECT: header_value(stored.subject, 1024),
        h.DEAD_SEQ: str(stored.stream_seq),
        h.DEAD_ATTEMPTS: str(attempts),
        h.DEAD_MS: str(now_ms),
        h.DEAD_STORED_MS: str(stored.stored_ms),
        h.MSG_ID: f"dead-{stored.stream_seq}",  # dedupe in IRIS_DLQ: a repeated move stores nothing new
    }
    msg_id = stored.headers.get(h.MSG_ID)
    if msg_id is not None:
        record[h.DEAD_MSG_ID] = header_value(msg_id, 1024)
    return {**kept, **record}


def _int(headers: dict[str, str], name: str) -> int:
    try:
        return int(headers.get(name, "0"))
    except ValueError:
        return 0


def read_dead_letter(dlq_seq: int, headers: dict[str, str]) -> DeadLetter:
    subject = headers.get(h.DEAD_SUBJECT, "")
    model, workload = parse_request_subject(subject) or ("", "")
    return DeadLetter(
        dlq_seq=dlq_seq,
        request_id=h.request_id_of(headers.get(h.DEAD_MSG_ID, headers.get(h.DEAD_SEQ, "")), request_owner(subject)),
        subject=subject,
        code=headers.get(h.DEAD_CODE, ""),
        reason=headers.get(h.DEAD_REASON, ""),
        attempts=_int(headers, h.DEAD_ATTEMPTS),
        stream_seq=_int(headers, h.DEAD_SEQ),
        dead_ms=_int(headers, h.DEAD_MS),
        stored_ms=_int(headers, h.DEAD_STORED_MS),
        model=model,
        workload=workload,
    )


def replay_headers(
    headers: dict[str, str], dlq_seq: int, now_ms: int, deadline_s: float | None = None
) -> dict[str, str]:
    """Headers to publish a dead letter again: the original's, under the new id `<id>-replay-<dlq seq>` (the
    old id is still in the dedupe window; the same replay twice runs once) and with a deadline as long as
    the original's (or `deadline_s`) counted from now, so a replay is not dead on arrival."""
    dead = read_dead_letter(dlq_seq, headers)
    out = {
        k: v
        for k, v in headers.items()
        if not k.startswith("Iris-Dead-") and not k.lower().startswith(_JETSTREAM_PREFIX)
    }
    suffix = f"-replay-{dlq_seq}"
    replay_id = to_token(dead.request_id)[: MAX_TOKEN_CHARS - len(suffix)] + suffix
    out[h.MSG_ID] = h.scoped_msg_id(replay_id, request_owner(dead.subject))
    budget_ms = _deadline_budget_ms(out, dead.stored_ms, deadline_s)
    if budget_ms is not None:
        out[h.DEADLINE] = str(now_ms + budget_ms)
        out[h.MSG_TTL] = ttl_header(now_ms + budget_ms, now_ms)
    return out


def _deadline_budget_ms(headers: dict[str, str], stored_ms: int, deadline_s: float | None) -> int | None:
    """How long the replay may take: `deadline_s`, else the original deadline minus its publish time;
    None leaves the headers as they were (no deadline: the default applies; a bad one: rejected again)."""
    if deadline_s is not None:
        return int(deadline_s * 1000)
    raw = headers.get(h.DEADLINE)
    if raw is None or not stored_ms:
        return None
    try:
        budget_ms = int(raw) - stored_ms
    except ValueError:
        return None
    return max(1000, min(budget_ms, int(MAX_DEADLINE_S * 1000)))
