"""What the chaos harness sees of Iris's replies: a tap per NATS node on `_INBOX.>`, by request id
(every reply carries `Iris-Request-Id`), so it counts final replies whichever way a request came in."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from schemas import headers as h

FINAL_KINDS = (h.KIND_RESULT, h.KIND_ERROR)


@dataclass
class Seen:
    """What the tap saw for one request id."""

    kinds: list[str] = field(default_factory=list)
    attempts: set[int] = field(default_factory=set)
    error_codes: list[str] = field(default_factory=list)

    @property
    def finals(self) -> int:
        return sum(kind in FINAL_KINDS for kind in self.kinds)


class Tap:
    """Every Iris reply on `_INBOX.>` seen through one NATS node, by request id."""

    def __init__(self) -> None:
        self.seen: dict[str, Seen] = defaultdict(Seen)

    async def on_reply(self, msg: Msg) -> None:
        headers = msg.headers or {}
        request_id, kind = headers.get(h.REQUEST_ID), headers.get(h.KIND)
        if request_id is None or kind is None or h.NATS_SUBJECT in headers:
            return  # not Iris's, or a client's direct get of the stored final (IRIS_ANSWERS), not a reply
        seen = self.seen[request_id]
        seen.kinds.append(kind)
        body = json.loads(msg.data) if msg.data else {}
        if kind == "chunk":
            seen.attempts.add(int(body.get("attempt", 1)))
        if kind == "error":
            seen.error_codes.append(str(body.get("code")))


class Taps:
    """One tap per NATS node, each connected to that node alone: the node killed takes its tap's view with
    it for a while, the other two see every reply. A request's replies are those of the tap that saw most,
    so a reply Iris really sent twice still counts twice."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.taps = [Tap() for _ in urls]
        self.connections: list[NATS] = []

    async def start(self) -> None:
        for url, tap in zip(self.urls, self.taps, strict=True):
            nc = await nats.connect([url], error_cb=expected, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
            await nc.subscribe("_INBOX.>", cb=tap.on_reply)
            await nc.flush()
            self.connections.append(nc)

    async def close(self) -> None:
        for nc in self.connections:
            await nc.close()

    def __getitem__(self, request_id: str) -> Seen:
        views = [tap.seen[request_id] for tap in self.taps if request_id in tap.seen]
        if not views:
            return Seen()
        most = max(views, key=lambda seen: len(seen.kinds))
        return Seen(most.kinds, set().union(*(seen.attempts for seen in views)), most.error_codes)

    def ids(self) -> set[str]:
        return {request_id for tap in self.taps for request_id, seen in tap.seen.items() if seen.kinds}

    def clear(self) -> None:
        for tap in self.taps:
            tap.seen.clear()


async def expected(exc: Exception) -> None:
    """A connection error while the harness kills a node is the point of the run, not news: no traceback."""
