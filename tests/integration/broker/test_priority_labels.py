"""The reference experiment's labels through the real stack, sent by raw nats-py clients (no Iris SDK):
a workload per tier, `Iris-Priority` 5 vs 1, no configured weights. Priority weighs across workloads, so
the paid workload is served 5:1 while both wait; `priority_mode = "strict"` serves paid first."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter

import pytest
from nats.aio.client import Client as NATS

from gpu_worker.engines.fake import FakeEngine
from iris.launch.nats_server import NatsServer
from iris.sdk.client import Client
from tests.integration.services import broker, wait_for_models, worker

TIERS = {"paid": 5, "open-source": 1}


async def raw_request(nc: NATS, workload: str, priority: int, user: str) -> str:
    """One request as any NATS client sends it; returns the final reply's kind."""
    inbox = nc.new_inbox()
    replies = await nc.subscribe(inbox)
    headers = {
        "Iris-Reply-To": inbox,
        "Iris-Deadline": str(int(time.time() * 1000) + 120_000),
        "Iris-Priority": str(priority),
        "Iris-User": user,
        "Nats-Msg-Id": uuid.uuid4().hex,
    }
    body = json.dumps({"prompt": f"{user} asks", "max_tokens": 8, "stream": False}).encode()
    try:
        await nc.jetstream().publish(f"iris.req.fake.{workload}", body, headers=headers)
        while True:
            msg = await replies.next_msg(timeout=60)
            kind = (msg.headers or {}).get("Iris-Kind", "")
            if kind in ("result", "error"):
                return kind
    finally:
        await replies.unsubscribe()


async def served_by_tier(nc: NATS, total: int) -> Counter[str]:
    """Three closed-loop users per tier; which tier each of the first `total` answers went to."""
    served: Counter[str] = Counter()
    done = asyncio.Event()

    async def user_loop(workload: str, user: str) -> None:
        while not done.is_set():
            kind = await raw_request(nc, workload, TIERS[workload], user)
            assert kind == "result"
            if sum(served.values()) < total:
                served[workload] += 1
            if sum(served.values()) >= total:
                done.set()

    await asyncio.gather(*(user_loop(w, f"{w}-{i}") for w in TIERS for i in range(3)))
    return served


@pytest.mark.parametrize("priority_mode", ["share", "strict"])
async def test_reference_labels_favour_paid_across_workloads(
    nats_server: NatsServer, nc: NATS, priority_mode: str
) -> None:
    engine = FakeEngine("fake", tokens_per_s=2000)
    async with (
        broker(nats_server.url, max_concurrency=1, priority_mode=priority_mode),
        worker(nats_server.url, engine, "w1", slots=1),
    ):
        await wait_for_models(Client(nc), "fake")
        served = await served_by_tier(nc, 120)
    paid_share = served["paid"] / 120
    if priority_mode == "share":
        assert 0.78 <= paid_share <= 0.89, served  # 5/6 while both wait
        assert served["open-source"] >= 12, served  # served all along, never starved
    else:
        assert paid_share >= 0.95, served  # paid always has a request waiting: it always goes first
