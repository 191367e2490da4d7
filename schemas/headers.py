"""Request and reply header names, and the parse of request headers into typed labels.

Headers carry everything the scheduler needs, so the broker reads the stream headers-only and never
touches prompt text. A bad header value raises `InvalidRequest` naming the header.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec

from schemas.errors import InvalidRequest
from schemas.reply_subjects import DEFAULT_REPLY_PREFIXES, reply_problem
from schemas.subjects import MAX_TOKEN_CHARS, is_token

REPLY_TO = "Iris-Reply-To"
DEADLINE = "Iris-Deadline"
PRIORITY = "Iris-Priority"
USER = "Iris-User"
# Who the user acts for (an API key's callers, OpenAI's `user` field): they split the user's share between
# them instead of each adding one.
END_USER = "Iris-End-User"
TOKENS = "Iris-Tokens"
KIND = "Iris-Kind"
REQUEST_ID = "Iris-Request-Id"
ADMISSION = "Iris-Admission"  # "1": an admission request; the broker answers with a Ticket, no worker runs it
MSG_ID = "Nats-Msg-Id"
MSG_TTL = "Nats-TTL"
EXPECTED_STREAM = "Nats-Expected-Stream"
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"  # "0": only if the subject holds nothing yet
# On a dead letter in IRIS_DLQ, next to the original request's own headers (see schemas.dead_letters).
DEAD_CODE = "Iris-Dead-Code"  # the error code its client got
DEAD_REASON = "Iris-Dead-Reason"
DEAD_SUBJECT = "Iris-Dead-Subject"  # where it was published
DEAD_SEQ = "Iris-Dead-Seq"  # its sequence in IRIS_REQUESTS
DEAD_ATTEMPTS = "Iris-Dead-Attempts"  # workers it ran on
DEAD_MS = "Iris-Dead-Ms"  # when it was dead-lettered, Unix ms
DEAD_STORED_MS = "Iris-Dead-Stored-Ms"  # when it was first stored, Unix ms
DEAD_MSG_ID = "Iris-Dead-Msg-Id"  # its Nats-Msg-Id (JetStream headers do not travel into the dead letter)
# Set by JetStream on direct-get replies.
NATS_TIMESTAMP = "Nats-Time-Stamp"
NATS_SUBJECT = "Nats-Subject"
# Set by JetStream on headers-only deliveries: the size of the body left out.
NATS_MSG_SIZE = "Nats-Msg-Size"

KIND_QUEUED = "queued"
KIND_CHUNK = "chunk"
KIND_RESULT = "result"
KIND_ERROR = "error"
KIND_TICKET = "ticket"

DEFAULT_DEADLINE_S = 120.0
MAX_DEADLINE_S = 3600.0
MIN_PRIORITY = 1
MAX_PRIORITY = 100
MAX_COST_TOKENS = 1_000_000


class RequestLabels(msgspec.Struct, frozen=True):
    request_id: str
    reply_to: str
    deadline_ms: int
    priority: int
    user: str
    cost_tokens: int  # 0 = not given, estimate it
    end_user: str = ""


def _int_header(headers: dict[str, str], name: str, low: int, high: int) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"header {name} must be an integer, got {raw[:40]!r}") from None
    if not low <= value <= high:
        raise InvalidRequest(f"header {name} must be in [{low}, {high}], got {value}")
    return value


def check_reply_to(reply_to: str, owner: str | None, prefixes: Sequence[str] = DEFAULT_REPLY_PREFIXES) -> None:
    """Raise `InvalidRequest` naming `Iris-Reply-To` unless replies may go to `reply_to` (see
    `schemas.reply_subjects`: under a reply prefix, or under `_INBOX.<owner>.` for an owned request)."""
    problem = reply_problem(reply_to, owner, prefixes)
    if problem is not None:
        raise InvalidRequest(f"header {REPLY_TO} {problem}, got {reply_to[:80]!r}")


def request_id_of(msg_id: str, owner: str | None) -> str:
    """The request id a `Nats-Msg-Id` names. JetStream's dedupe is stream-wide, so on an owned subject the
    id goes as `<owner>.<id>` (`scoped_msg_id`): two users who pick the same key are two requests. A plain
    `<id>` there is taken as it is (it shares the dedupe with every user's plain ids)."""
    if owner and msg_id.startswith(owner + "."):
        return msg_id[len(owner) + 1 :]
    return msg_id


def scoped_msg_id(request_id: str, owner: str | None) -> str:
    """The `Nats-Msg-Id` of request `request_id` published by `owner` (None: unowned, the id itself)."""
    return f"{owner}.{request_id}" if owner else request_id


def parse_request_headers(
    headers: dict[str, str],
    now_ms: int,
    fallback_id: str,
    *,
    owner: str | None = None,
    reply_prefixes: Sequence[str] = DEFAULT_REPLY_PREFIXES,
) -> RequestLabels:
    """Validate request headers; `fallback_id` names a request that carries no `Nats-Msg-Id`, `owner` is
    the owner token of its subject (None: none) and `reply_prefixes` where an unowned one may reply."""
    reply_to = headers.get(REPLY_TO, "")
    check_reply_to(reply_to, owner, reply_prefixes)
    request_id = request_id_of(headers.get(MSG_ID, fallback_id), owner)
    if not is_token(request_id):
        raise InvalidRequest(f"header {MSG_ID} must match [A-Za-z0-9_-]{{1,{MAX_TOKEN_CHARS}}}")
    deadline_ms = _int_header(headers, DEADLINE, 0, 2**53)
    if deadline_ms is None:
        deadline_ms = now_ms + int(DEFAULT_DEADLINE_S * 1000)
    elif deadline_ms > now_ms + int(MAX_DEADLINE_S * 1000):
        raise InvalidRequest(f"header {DEADLINE} is more than {MAX_DEADLINE_S:.0f} s in the future")
    user, end_user = _token_header(headers, USER), _token_header(headers, END_USER)
    return RequestLabels(
        request_id=request_id,
        reply_to=reply_to,
        deadline_ms=deadline_ms,
        priority=_int_header(headers, PRIORITY, MIN_PRIORITY, MAX_PRIORITY) or MIN_PRIORITY,
        user=user,
        cost_tokens=_int_header(headers, TOKENS, 1, MAX_COST_TOKENS) or 0,
        end_user=end_user,
    )


def _token_header(headers: dict[str, str], name: str) -> str:
    value = headers.get(name, "")
    if value and not is_token(value):
        raise InvalidRequest(f"header {name} must match [A-Za-z0-9_-]{{1,{MAX_TOKEN_CHARS}}}")
    return value


def ttl_header(deadline_ms: int, now_ms: int) -> str:
    """`Nats-TTL` for a request: whole seconds until the deadline, rounded up, at least 1."""
    return str(max(1, math.ceil((deadline_ms - now_ms) / 1000)))
