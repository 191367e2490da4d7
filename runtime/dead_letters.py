"""Moving a request to the dead letters (`IRIS_DLQ`) in the order that loses nothing: store the dead letter
(`schemas.dead_letters` says what it holds), store and send the client its typed error, then delete the request."""

from __future__ import annotations

from nats.aio.client import Client as NATS

from runtime.answers import send_final
from runtime.stream_ops import (
    PUBLISH_SLACK_BYTES,
    delete_request,
    error_reply,
    headers_bytes,
    while_unavailable,
)
from schemas import headers as h
from schemas.dead_letters import DeadLetterError, dead_letter_headers, header_value
from schemas.errors import ErrorCode
from schemas.messages import StoredRequest
from schemas.subjects import DLQ_STREAM, dead_letter_subject, request_owner


async def store_dead_letter(
    nc: NATS, stored: StoredRequest, code: ErrorCode, reason: str, attempts: int, now_ms: int
) -> int:
    """Publish the dead letter and wait for its ack; its `IRIS_DLQ` sequence. One the added headers would
    push past the server's payload limit (which closes the connection) is kept without its body."""
    subject = dead_letter_subject(stored.subject)
    headers = dead_letter_headers(stored, code, reason, attempts, now_ms)
    body = stored.body
    if len(body) + headers_bytes(headers) + PUBLISH_SLACK_BYTES > nc.max_payload:
        headers[h.DEAD_REASON] = header_value(f"{reason} [body dropped: too large for a dead letter]")
        body = b""
    js = nc.jetstream()
    try:
        ack = await while_unavailable(lambda: js.publish(subject, body, headers=headers, stream=DLQ_STREAM))
    except Exception as exc:
        raise DeadLetterError(f"dead letter for request {stored.stream_seq} not stored: {exc}") from exc
    return int(ack.seq)


async def move_to_dlq(
    nc: NATS,
    stored: StoredRequest,
    code: ErrorCode,
    reason: str,
    attempts: int,
    reply: tuple[str, str],
    now_ms: int,
) -> int:
    """Store the dead letter, send the client (`reply`: reply_to, request id) its typed error, then remove
    the request; returns the dead letter's sequence. Raises `DeadLetterError` with the request untouched.
    The caller vets `reply_to` (`schemas.reply_subjects`); "" sends no error to anyone (it is stored all
    the same, for a retry with the same key)."""
    dlq_seq = await store_dead_letter(nc, stored, code, reason, attempts, now_ms)
    reply_to, request_id = reply
    error = error_reply(code, f"{reason} (dead letter {dlq_seq} in {DLQ_STREAM})")
    await send_final(nc, reply_to, request_id, error, owner=request_owner(stored.subject))
    await delete_request(nc, stored.stream_seq)
    return dlq_seq
