"""Durable answers: every request's final reply (`Result` or `Error`, exactly as its client got it) is kept
in stream `IRIS_ANSWERS` under `iris.answer[.<owner>].<request id>` for the broker's dedupe window, so the
idempotency key that keeps a retry from running twice also brings it the answer.

Whoever ends a request (a worker, or the broker for a rejection, expiry, cancel or dead letter) stores the
final with a JetStream acknowledgement, then sends it to the client's inbox, then lets the request leave
`IRIS_REQUESTS` (`runtime.answers.send_final`). So a request that left the stream always has its final
stored, and a client that missed the reply (a reconnect, a retry after a network error) reads it with a
direct get by subject (`$JS.API.DIRECT.GET.IRIS_ANSWERS.iris.answer[.<owner>].<id>`), which the accounts
grant each user for its own answers only. One message per request: a final is stored only while its subject
holds nothing (`Nats-Expected-Last-Subject-Sequence: 0`), so a second final (an at-least-once re-run) is
refused and the first stays; unlike a `Nats-Msg-Id` this costs the server no dedupe entry per answer.
No prompt text is stored beyond what the answer holds.

The same stream keeps each running answer's progress under `iris.progress[.<owner>].<request id>`
(`runtime.progress`): one message per subject (the stream keeps the last), leaving with the same window,
purged once the final is stored.
"""

from __future__ import annotations

from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from schemas import headers as h
from schemas.subjects import ANSWER_FILTER, ANSWER_STREAM, PROGRESS_FILTER, is_token


def answer_stream_config(replicas: int, max_age_s: float, max_bytes: int) -> StreamConfig:
    """Answers leave with the dedupe window (`max_age_s`: a retry after it would run again anyway); at
    `max_bytes` the oldest go first, so a flood never stops a new final from being stored. One message per
    subject: a final is one anyway, and a progress record supersedes the one before it."""
    return StreamConfig(
        name=ANSWER_STREAM,
        subjects=[ANSWER_FILTER, PROGRESS_FILTER],
        max_msgs_per_subject=1,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=max_age_s,
        max_bytes=max_bytes,
        discard=DiscardPolicy.OLD,
        duplicate_window=max_age_s,
        allow_direct=True,
        num_replicas=replicas,
    )


def storable(request_id: str, owner: str | None) -> bool:
    """Only a request id (and owner) that are subject tokens have an answer subject; a request too broken to
    have one (an unparseable header) gets its error on its inbox only."""
    return is_token(request_id) and (owner is None or is_token(owner))


def answer_headers(kind: str, request_id: str) -> dict[str, str]:
    """The headers of a stored final: those its client got (`Iris-Kind`, `Iris-Request-Id`), and the
    expectations that keep one final per request, in this stream only."""
    return {
        h.KIND: kind,
        h.REQUEST_ID: request_id,
        h.EXPECTED_STREAM: ANSWER_STREAM,
        h.EXPECTED_LAST_SUBJECT_SEQ: "0",
    }
