"""How every Iris process connects to NATS.

`url` may list several servers separated by commas (a cluster). A user named in the URL
(`nats://alice:secret@host:4222`) gets the inbox prefix `_INBOX.<user>`: the deploy/ permissions let each
user subscribe only below its own prefix, so no one can read another client's replies. Such a connection
is that user's: its requests and cancels carry the user as owner token (`connection_owner`), which is what
the accounts let it publish and what the services check its reply subjects against.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlparse

import nats
from nats.aio.client import Client as NATS
from nats.protocol import parser

from schemas.reply_subjects import INBOX_PREFIX
from schemas.subjects import is_token

T = TypeVar("T")


def per_connection(make: Callable[[NATS], T]) -> Callable[[NATS], T]:
    """`make(nc)` once per connection, kept while the connection lives (an object that subscribes once per
    connection: the SDK's reply router, the answer store)."""
    made: weakref.WeakKeyDictionary[NATS, T] = weakref.WeakKeyDictionary()

    def of(nc: NATS) -> T:
        value = made.get(nc)
        if value is None:
            value = made[nc] = make(nc)
        return value

    return of


def server_list(url: str) -> list[str]:
    return [part.strip() for part in url.split(",") if part.strip()]


def inbox_prefix(url: str) -> str | None:
    users = {urlparse(server).username for server in server_list(url)} - {None, ""}
    return f"_INBOX.{users.pop()}" if len(users) == 1 else None


def connection_owner(nc: NATS) -> str | None:
    """The owner token of a connection whose inboxes are `_INBOX.<owner>.…`; None for plain `_INBOX.…`."""
    prefix = nc.new_inbox().rsplit(".", 1)[0]
    owner = prefix[len(INBOX_PREFIX) :] if prefix.startswith(INBOX_PREFIX) else ""
    return owner if is_token(owner) else None


async def connect(url: str, name: str, **options: Any) -> NATS:
    prefix = inbox_prefix(url)
    if prefix and "inbox_prefix" not in options:
        options["inbox_prefix"] = prefix
    options.setdefault("max_reconnect_attempts", -1)
    return await nats.connect(server_list(url), name=name, **options)


def _tolerate_any_subject_bytes() -> None:
    """nats-server splits protocol arguments on spaces and tabs only, so a client may publish a subject
    holding a vertical tab or form feed (`iris.req.a\\x0bb.c`). nats-py's parser splits on every regex
    `\\s`, fails to read such a message and drops the connection; a JetStream consumer then meets the same
    message again after reconnecting, forever. One hostile publish would stall the broker. Parse protocol
    lines the way the server writes them instead."""
    token, gap = rb"([^ \t\r\n]+)", rb"[ \t]+"
    parser.MSG_RE = re.compile(rb"\AMSG" + gap + token + gap + token + gap + rb"(" + token + gap + rb")?(\d+)\r\n")
    parser.HMSG_RE = re.compile(
        rb"\AHMSG" + gap + token + gap + token + gap + rb"(" + token + gap + rb")?(\d+)" + gap + rb"(\d+)\r\n"
    )


_tolerate_any_subject_bytes()
