"""Where Iris may publish for a client, and which client owns a request: rules every service applies.

Services hold rights no client has (`$KV.*`, `$JS.API.*`, `iris.worker.*`), so a reply subject a client
names (`Iris-Reply-To`) must lie under a reply prefix, `_INBOX.` by default: anything else is refused,
dead-lettered and never published to. A request whose subject carries an owner token
(`iris.req.<model>.<workload>.<owner>`, which the least-privilege accounts let each user publish under its
own name only) must reply under that owner's inbox `_INBOX.<owner>.`, the only inbox its owner may read: so
no client can aim Iris's replies at another client. The inbox names the owner for cancels too:
`iris.cancel.<owner>.<id>` stops a request only when its replies go to `_INBOX.<owner>.`, while
`iris.cancel.<id>` (no owner, which the accounts grant no client) cancels any request, as a deployment
without accounts expects.
"""

from __future__ import annotations

from collections.abc import Sequence

INBOX_PREFIX = "_INBOX."
DEFAULT_REPLY_PREFIXES = (INBOX_PREFIX,)
MAX_REPLY_CHARS = 512
# Subjects no reply prefix may open: JetStream, KV and system APIs, and Iris's own control subjects.
_RESERVED_PREFIXES = ("$", "iris.")


def owner_inbox(owner: str) -> str:
    """The reply prefix of requests owned by `owner` (as `runtime.connection` names its inboxes)."""
    return f"{INBOX_PREFIX}{owner}."


def is_plain_subject(subject: str) -> bool:
    """Non-empty dot-separated tokens of printable non-space characters, no wildcards."""
    if not subject or len(subject) > MAX_REPLY_CHARS:
        return False
    if any(not c.isprintable() or c.isspace() or c in "*>" for c in subject):
        return False
    return all(subject.split("."))


def reply_problem(reply_to: str, owner: str | None, prefixes: Sequence[str] = DEFAULT_REPLY_PREFIXES) -> str | None:
    """Why replies may not go to `reply_to` for a request of `owner` (None: no owner token), or None."""
    if not reply_to:
        return "is required"
    if not is_plain_subject(reply_to):
        return f"must be a plain subject of at most {MAX_REPLY_CHARS} characters"
    allowed = (owner_inbox(owner),) if owner is not None else tuple(prefixes)
    if not any(reply_to.startswith(prefix) and len(reply_to) > len(prefix) for prefix in allowed):
        return "must lie under " + " or ".join(repr(prefix) for prefix in allowed)
    return None


def allowed_reply(reply_to: str, owner: str | None, prefixes: Sequence[str] = DEFAULT_REPLY_PREFIXES) -> str:
    """`reply_to` when replies may go there, else "" (the caller then sends nothing)."""
    return reply_to if reply_problem(reply_to, owner, prefixes) is None else ""


def may_cancel(cancel_owner: str | None, reply_to: str) -> bool:
    """A cancel from `iris.cancel.<cancel_owner>.<id>` (None: `iris.cancel.<id>`) may stop the request
    whose replies go to `reply_to`: only its owner's, or any from a publisher the accounts trust."""
    return cancel_owner is None or reply_to.startswith(owner_inbox(cancel_owner))


def parse_reply_prefixes(text: str) -> tuple[str, ...]:
    """A config's comma-separated reply prefixes; `ValueError` naming a prefix that would open too much."""
    prefixes = tuple(part.strip() for part in text.split(",") if part.strip())
    if not prefixes:
        raise ValueError("reply_prefixes must name at least one prefix, e.g. '_INBOX.'")
    for prefix in prefixes:
        if not prefix.endswith(".") or not is_plain_subject(prefix[:-1]):
            raise ValueError(f"reply prefix {prefix!r} must be plain subject tokens ending in '.', e.g. '_INBOX.'")
        if prefix.startswith(_RESERVED_PREFIXES):
            raise ValueError(f"reply prefix {prefix!r} would let clients aim replies at $-APIs or iris.* subjects")
    return prefixes
