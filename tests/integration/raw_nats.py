"""Raw NATS requests for the bad-input tests: no SDK between the test and the stream."""

from __future__ import annotations

import json
import time

from nats.aio.client import Client as NATS


async def raw_request(nc: NATS, subject: str, body: bytes, headers: dict[str, str]) -> dict[str, object]:
    """Publish, then return the first final reply (result or error) on the inbox."""
    inbox = headers.get("Iris-Reply-To") or nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.jetstream().publish(subject, body, headers=headers)
    while True:
        msg = await sub.next_msg(timeout=20)
        if msg.headers["Iris-Kind"] in ("result", "error"):
            await sub.unsubscribe()
            return {"kind": msg.headers["Iris-Kind"], **json.loads(msg.data)}


def good_headers(nc: NATS) -> dict[str, str]:
    return {"Iris-Reply-To": nc.new_inbox(), "Iris-Deadline": str(int(time.time() * 1000) + 30_000)}
