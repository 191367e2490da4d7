"""Every NATS subject, stream and bucket name Iris uses, defined once.

A subject token (model, workload, request id, worker id) is one NATS token of `[A-Za-z0-9_-]+`, so a
subject can always be split back into its parts and no label can smuggle in a wildcard or a dot.
Requests and cancels may carry an owner token (`iris.req.<model>.<workload>.<owner>`,
`iris.cancel.<owner>.<id>`): the NATS user that published them, as the least-privilege accounts enforce
(see `schemas.reply_subjects` for what the owner may do).
"""

from __future__ import annotations

import re

REQUEST_STREAM = "IRIS_REQUESTS"
LEASE_BUCKET = "IRIS_LEASES"
BROKER_BUCKET = "IRIS_BROKERS"  # leader election between brokers
MODEL_BUCKET = "IRIS_MODELS"  # one ModelCard per served model (schemas.model_cards)
LEADER_KEY = "leader"
DLQ_STREAM = "IRIS_DLQ"  # dead letters: requests Iris gave up on, with their reason
CANCEL_STREAM = "IRIS_CANCELS"  # every cancel, kept as long as a request may live (schemas.cancels)
ANSWER_STREAM = "IRIS_ANSWERS"  # every final reply, kept for the dedupe window (schemas.answers)

REQUEST_PREFIX = "iris.req"
REQUEST_FILTER = "iris.req.>"
# A consumer's filter meaning "the whole stream". The broker's consumer uses it, not REQUEST_FILTER: with a
# filter nats-server 2.15 can skip a message whose subject holds DEL (\x7f) when it is the next to deliver
# (its subject tree uses that byte internally), and such a request would sit unanswered until its TTL.
WHOLE_STREAM = ">"
DLQ_PREFIX = "iris.dlq"
DLQ_FILTER = "iris.dlq.>"
CANCEL_PREFIX = "iris.cancel"
CANCEL_FILTER = "iris.cancel.>"  # iris.cancel.<id> and iris.cancel.<owner>.<id>
ANSWER_PREFIX = "iris.answer"  # iris.answer[.<owner>].<id>: a request's stored final reply
ANSWER_FILTER = "iris.answer.>"
PROGRESS_PREFIX = "iris.progress"  # iris.progress[.<owner>].<id>: the tokens a running answer produced so far
PROGRESS_FILTER = "iris.progress.>"
LIVE_PREFIX = "iris.live"  # iris.live[.<owner>].<id>: every reply of a request, core NATS, for joiners
HEARTBEAT_FILTER = "iris.worker.hb.>"
DONE_FILTER = "iris.worker.done.>"
API_PREFIX = "iris.api"
BROKER_STATS_SUBJECT = "iris.broker.stats"
ADMIT_PREFIX = "iris.admit"
ADMIT_FILTER = "iris.admit.*"
ADMIT_END = "iris.admit.end"  # so `end` is no model name for admission

# JetStream API subjects Iris calls directly because nats-py's helpers are slower or erase bytes.
JS_DIRECT_GET = "$JS.API.DIRECT.GET." + REQUEST_STREAM
JS_MSG_DELETE = "$JS.API.STREAM.MSG.DELETE." + REQUEST_STREAM
JS_MSG_GET = "$JS.API.STREAM.MSG.GET." + REQUEST_STREAM  # served by the stream leader: a consistent read
JS_ANSWER_GET = "$JS.API.DIRECT.GET." + ANSWER_STREAM  # + "." + an answer subject: its last message
JS_ANSWER_PURGE = "$JS.API.STREAM.PURGE." + ANSWER_STREAM  # {"filter": subject}: a progress record goes
JS_STREAM_INFO = "$JS.API.STREAM.INFO." + REQUEST_STREAM  # with deleted_details, which nats-py cannot ask for
JS_PULL_NEXT = "$JS.API.CONSUMER.MSG.NEXT." + REQUEST_STREAM  # + "." + a consumer: a pull request

TOKEN_PATTERN = r"^[A-Za-z0-9_-]+$"
_TOKEN_RE = re.compile(TOKEN_PATTERN)
MAX_TOKEN_CHARS = 128


def is_token(value: str) -> bool:
    """True when `value` is a valid single subject token for Iris."""
    return len(value) <= MAX_TOKEN_CHARS and _TOKEN_RE.match(value) is not None


def to_token(value: str) -> str:
    """Map any label to a valid token (the SDK's job; the broker rejects instead)."""
    mapped = re.sub(r"[^A-Za-z0-9_-]", "_", value)[:MAX_TOKEN_CHARS]
    return mapped or "_"


def request_subject(model: str, workload: str, owner: str | None = None) -> str:
    subject = f"{REQUEST_PREFIX}.{model}.{workload}"
    return subject if owner is None else f"{subject}.{owner}"


def parse_request_subject(subject: str) -> tuple[str, str] | None:
    """(model, workload) of `iris.req.<model>.<workload>[.<owner>]`; None when the subject has another shape."""
    parts = subject.split(".")
    if len(parts) not in (4, 5) or f"{parts[0]}.{parts[1]}" != REQUEST_PREFIX:
        return None
    return parts[2], parts[3]


def request_owner(subject: str) -> str | None:
    """The owner token of `iris.req.<model>.<workload>.<owner>`; None for a subject without one."""
    parts = subject.split(".")
    return parts[4] if len(parts) == 5 else None


def dead_letter_subject(request_subject: str) -> str:
    """`iris.dlq.<model>.<workload>` of a request's subject; a subject of another shape maps to `_._`."""
    parts = parse_request_subject(request_subject)
    model, workload = (to_token(p) for p in parts) if parts is not None else ("_", "_")
    return f"{DLQ_PREFIX}.{model}.{workload}"


def cancel_subject(request_id: str, owner: str | None = None) -> str:
    return f"{CANCEL_PREFIX}.{request_id}" if owner is None else f"{CANCEL_PREFIX}.{owner}.{request_id}"


def parse_cancel_subject(subject: str) -> tuple[str | None, str] | None:
    """(owner or None, request id) of `iris.cancel[.<owner>].<id>`; None for another shape."""
    parts = subject.split(".")
    if f"{parts[0]}.{parts[1] if len(parts) > 1 else ''}" != CANCEL_PREFIX or len(parts) not in (3, 4):
        return None
    return (parts[2] if len(parts) == 4 else None), parts[-1]


def cancelled_request_id(subject: str) -> str:
    """The request id of a cancel subject (its last token); who may cancel is `parse_cancel_subject`'s owner."""
    return subject.rsplit(".", 1)[-1]


def answer_subject(request_id: str, owner: str | None = None) -> str:
    """Where a request's final reply is stored (stream `IRIS_ANSWERS`), under its owner like its cancels."""
    return f"{ANSWER_PREFIX}.{request_id}" if owner is None else f"{ANSWER_PREFIX}.{owner}.{request_id}"


def parse_answer_subject(subject: str) -> tuple[str | None, str] | None:
    """(owner or None, request id) of `iris.answer[.<owner>].<id>`; None for another shape."""
    parts = subject.split(".")
    if len(parts) not in (3, 4) or f"{parts[0]}.{parts[1]}" != ANSWER_PREFIX:
        return None
    return (parts[2] if len(parts) == 4 else None), parts[-1]


def answer_get_subject(request_id: str, owner: str | None = None) -> str:
    """The direct get of a stored final by subject: what a client (and its account's permissions) names."""
    return f"{JS_ANSWER_GET}.{answer_subject(request_id, owner)}"


def progress_subject(request_id: str, owner: str | None = None) -> str:
    """Where a running answer's progress is kept (stream `IRIS_ANSWERS`, the last record only), under its
    owner like its final, so another worker can continue it (`runtime.progress`)."""
    return f"{PROGRESS_PREFIX}.{request_id}" if owner is None else f"{PROGRESS_PREFIX}.{owner}.{request_id}"


def progress_get_subject(request_id: str, owner: str | None = None) -> str:
    """The direct get of a request's last progress record by subject."""
    return f"{JS_ANSWER_GET}.{progress_subject(request_id, owner)}"


def live_subject(request_id: str, owner: str | None = None) -> str:
    """Every reply of a request is also published here (core NATS: free without subscribers), so a retry
    with the same idempotency key can join a request still queued or running."""
    return f"{LIVE_PREFIX}.{request_id}" if owner is None else f"{LIVE_PREFIX}.{owner}.{request_id}"


def lease_offer_subject(worker_id: str) -> str:
    return f"iris.worker.{worker_id}.lease"


def lease_control_subject(worker_id: str) -> str:
    """Suspend / resume orders for one worker's leases (`LeaseControl` → `LeaseControlAnswer`)."""
    return f"iris.worker.{worker_id}.control"


def heartbeat_subject(model: str, worker_id: str) -> str:
    return f"iris.worker.hb.{model}.{worker_id}"


def done_subject(model: str) -> str:
    return f"iris.worker.done.{model}"


def api_subject(endpoint: str) -> str:
    return f"{API_PREFIX}.{endpoint}"


def admit_subject(model: str) -> str:
    return f"{ADMIT_PREFIX}.{model}"


def admitted_model(subject: str) -> str:
    return subject[len(ADMIT_PREFIX) + 1 :]


def lease_key(stream_seq: int) -> str:
    return str(stream_seq)


def lease_record_subject(stream_seq: int) -> str:
    """The KV subject of a lease's record: a plain publish there writes (or, with `KV-Operation: DEL`,
    deletes) it without an acknowledgement to wait for."""
    return f"$KV.{LEASE_BUCKET}.{lease_key(stream_seq)}"
