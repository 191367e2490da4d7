"""How every Iris process connects to NATS.

`url` may list several servers separated by commas (a cluster). A user named in the URL
(`nats://alice:secret@host:4222`) gets the inbox prefix `_INBOX.<user>`: the deploy/ permissions let each
user subscribe only below its own prefix, so no one can read another client's replies.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

import nats
from nats.aio.client import Client as NATS


def server_list(url: str) -> list[str]:
    return [part.strip() for part in url.split(",") if part.strip()]


def inbox_prefix(url: str) -> str | None:
    users = {urlparse(server).username for server in server_list(url)} - {None, ""}
    return f"_INBOX.{users.pop()}" if len(users) == 1 else None


async def connect(url: str, name: str, **options: Any) -> NATS:
    prefix = inbox_prefix(url)
    if prefix and "inbox_prefix" not in options:
        options["inbox_prefix"] = prefix
    options.setdefault("max_reconnect_attempts", -1)
    return await nats.connect(server_list(url), name=name, **options)
