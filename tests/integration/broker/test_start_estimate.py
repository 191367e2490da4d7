"""The start estimate behind `deadline_unmeetable` sums the tokens ahead of a request under the fair order
at the engine time per token its workers report, and errs on the side of admitting: a deep backlog of tiny
requests that all finish well in time is admitted whole, while a backlog that truly cannot finish by its
deadline is still refused at admission."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from gpu_worker.engines.fake import FakeEngine
from iris.launch.nats_server import NatsServer
from iris.sdk.client import Client
from tests.integration.services import broker, eventually, wait_for_models, worker

BACKLOG = 3_000
LONG = 50
HOPELESS = 60


class Finals:
    """Every final reply on one inbox, by request id: `result` or the error code."""

    def __init__(self) -> None:
        self.by_id: dict[str, list[str]] = {}

    async def on_reply(self, msg: Msg) -> None:
        headers = msg.headers or {}
        kind = headers.get("Iris-Kind")
        if kind in ("result", "error"):
            outcome = "result" if kind == "result" else json.loads(msg.data)["code"]
            self.by_id.setdefault(headers.get("Iris-Request-Id", "?"), []).append(outcome)

    def outcomes(self, prefix: str) -> Counter[str]:
        return Counter(o for rid, outs in self.by_id.items() if rid.startswith(prefix) for o in outs)

    def answered(self, prefix: str) -> int:
        return sum(1 for rid in self.by_id if rid.startswith(prefix))


async def publish(
    nc: NATS, inbox: str, prefix: str, n: int, deadline_s: float, max_tokens: int, tokens: int = 0
) -> None:
    js = nc.jetstream()
    deadline = str(int(time.time() * 1000) + int(deadline_s * 1000))
    body = json.dumps({"prompt": f"{prefix} asks", "max_tokens": max_tokens, "stream": False}).encode()
    acks = []
    for i in range(n):
        headers = {"Iris-Reply-To": inbox, "Iris-Deadline": deadline, "Nats-Msg-Id": f"{prefix}-{i}"}
        if tokens:
            headers["Iris-Tokens"] = str(tokens)
        acks.append(await js.publish_async(f"iris.req.fake.{prefix}", body, headers=headers))
    await asyncio.gather(*acks)


async def test_a_backlog_that_finishes_in_time_is_admitted_and_one_that_cannot_is_refused(
    nats_server: NatsServer, nc: NATS
) -> None:
    finals = Finals()
    inbox = nc.new_inbox()
    await nc.subscribe(inbox, cb=finals.on_reply)
    async with broker(nats_server.url), worker(nats_server.url, FakeEngine("fake", tokens_per_s=1000), "w1", slots=8):
        await wait_for_models(Client(nc), "fake")
        await publish(nc, inbox, "tiny", BACKLOG, deadline_s=150, max_tokens=1)
        await publish(nc, inbox, "long", LONG, deadline_s=150, max_tokens=200)

        async def all_answered() -> bool:
            return finals.answered("tiny") == BACKLOG and finals.answered("long") == LONG

        await eventually(all_answered, timeout_s=150, what="every backlog request to be answered")
        assert finals.outcomes("tiny") == Counter(result=BACKLOG), finals.outcomes("tiny")
        assert finals.outcomes("long") == Counter(result=LONG), finals.outcomes("long")

        # 60 answers of 400 tokens on 8 slots at 1 ms a token (FakeEngine's 1,000 tokens/s, or slower) take
        # 3 s or more; each must be done within 2 s.
        await publish(nc, inbox, "hopeless", HOPELESS, deadline_s=2.0, max_tokens=400, tokens=400)

        async def hopeless_answered() -> bool:
            return finals.answered("hopeless") == HOPELESS

        await eventually(hopeless_answered, timeout_s=30, what="every hopeless request to be answered")
    outcomes = finals.outcomes("hopeless")
    assert sum(outcomes.values()) == HOPELESS  # exactly one final reply each
    assert outcomes["deadline_unmeetable"] >= 10, outcomes  # refused at once, not left to expire
    assert outcomes["result"] >= 1, outcomes  # the head of the line starts at once
