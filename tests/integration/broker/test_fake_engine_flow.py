"""Request flow through a real nats-server with FakeEngine workers: load sharing, idempotency,
deadlines, capacity errors and queue updates."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.aio.client import Client as NATS

from gpu_worker.engines.fake import FakeEngine
from iris.launch.nats_server import NatsServer
from iris.sdk.client import Client
from schemas.errors import DeadlineExceeded, InvalidRequest, NoCapacity, QueueFull
from tests.integration.services import broker, eventually, stream_messages, wait_stream_empty, worker


async def test_two_workers_share_load(nats_server: NatsServer, nc: NATS) -> None:
    engines = [FakeEngine("fake", slots=1, tokens_per_s=50), FakeEngine("fake", slots=1, tokens_per_s=50)]
    async with (
        broker(nats_server.url),
        worker(nats_server.url, engines[0], "w1"),
        worker(nats_server.url, engines[1], "w2"),
    ):
        client = Client(nc)
        results = await asyncio.gather(*(client.complete(f"prompt {i}", model="fake", max_tokens=10) for i in range(8)))
    assert {r.worker for r in results} == {"w1", "w2"}
    assert engines[0].generations + engines[1].generations == 8
    assert min(e.generations for e in engines) >= 2


async def test_duplicate_msg_id_runs_once(nats_server: NatsServer, nc: NATS) -> None:
    engine = FakeEngine("fake")
    async with broker(nats_server.url), worker(nats_server.url, engine, "w1"):
        js = nc.jetstream()
        inbox = nc.new_inbox()
        first = await nc.subscribe(inbox)
        headers = {"Iris-Reply-To": inbox, "Nats-Msg-Id": "order-42"}
        ack1 = await js.publish("iris.req.fake.default", b'{"prompt": "pay once", "max_tokens": 3}', headers=headers)
        ack2 = await js.publish(
            "iris.req.fake.default",
            b'{"prompt": "pay once", "max_tokens": 3}',
            headers={**headers, "Iris-Reply-To": nc.new_inbox()},
        )
        assert ack2.duplicate and ack2.seq == ack1.seq
        kinds = []
        while "result" not in kinds:
            kinds.append((await first.next_msg(timeout=10)).headers["Iris-Kind"])
        client = Client(nc)
        again = await client.complete("pay once", model="fake", max_tokens=3, idempotency_key="order-42")
        assert again.usage.completion_tokens == 3  # the first run's answer, from IRIS_ANSWERS
        # A later request finishing proves the broker had every chance to run the duplicate (FIFO, one slot).
        await client.complete("barrier", model="fake", max_tokens=1)
    assert engine.generations == 2  # "pay once" + "barrier"
    assert kinds.count("result") == 1


async def test_queued_request_past_deadline_gets_deadline_exceeded(nats_server: NatsServer, nc: NATS) -> None:
    slow = FakeEngine("fake", slots=1, tokens_per_s=20)
    async with broker(nats_server.url), worker(nats_server.url, slow, "w1"):
        client = Client(nc)
        long_run = asyncio.ensure_future(client.complete("occupy the slot", model="fake", max_tokens=60))
        with pytest.raises(DeadlineExceeded):
            await client.complete("too late", model="fake", max_tokens=5, deadline_s=1.0)
        result = await long_run
        assert result.finish_reason == "length"
        await wait_stream_empty(nc)


async def test_running_request_stops_at_deadline(nats_server: NatsServer, nc: NATS) -> None:
    async with broker(nats_server.url), worker(nats_server.url, FakeEngine("fake", tokens_per_s=20), "w1"):
        started = time.monotonic()
        result = await Client(nc).complete("long answer", model="fake", max_tokens=1000, deadline_s=3.0)
    assert result.finish_reason == "deadline"
    assert 0 < result.usage.completion_tokens < 1000
    assert time.monotonic() - started < 10


async def test_unknown_model_gets_no_capacity(nats_server: NatsServer, nc: NATS) -> None:
    async with broker(nats_server.url, worker_timeout_s=0.5), worker(nats_server.url, FakeEngine("fake"), "w1"):
        client = Client(nc)
        await client.complete("warm up", model="fake", max_tokens=1)
        with pytest.raises(NoCapacity) as info:
            await client.complete("hello", model="nosuchmodel", max_tokens=1)
        assert info.value.retry_after_s is not None and info.value.retry_after_s > 0


async def test_queue_update_then_chunks_then_result(nats_server: NatsServer, nc: NATS) -> None:
    async with broker(nats_server.url), worker(nats_server.url, FakeEngine("fake"), "w1"):
        generation = Client(nc).generate("hello there", model="fake", max_tokens=4, user="alice", priority=5)
        chunks = [chunk async for chunk in generation]
    assert [c.index for c in chunks] == [0, 1, 2, 3]
    assert generation.result is not None
    assert generation.result.text == "".join(c.text for c in chunks)
    assert generation.result.usage.completion_tokens == 4
    assert generation.queue_updates and generation.queue_updates[0].position == 0


async def test_client_rejects_bad_input_before_sending(nc: NATS) -> None:
    client = Client(nc)
    with pytest.raises(InvalidRequest, match="max_tokens"):
        client.generate("hi", model="fake", max_tokens=0)
    with pytest.raises(InvalidRequest, match="priority"):
        client.generate("hi", model="fake", priority=0)


async def test_wfq_serves_newcomer_and_paid_before_a_backlog(nats_server: NatsServer, nc: NATS) -> None:
    """Through real NATS: one slot busy, a user's backlog waiting; another user's request, and a
    priority-5 request, start before that backlog drains (FIFO would put them last)."""
    async with (
        broker(nats_server.url, policy="wfq"),
        worker(nats_server.url, FakeEngine("fake", tokens_per_s=200), "w1"),
    ):
        client = Client(nc)
        order: list[str] = []

        async def run(name: str, **labels: object) -> None:
            await client.complete(name, model="fake", max_tokens=10, **labels)  # type: ignore[arg-type]
            order.append(name)

        backlog = [asyncio.ensure_future(run(f"flood-{i}", user="flood")) for i in range(8)]

        async def flood_queued() -> bool:
            return await stream_messages(nc) >= 8

        await eventually(flood_queued, what="the flood in the stream")
        late = [
            asyncio.ensure_future(run("alice", user="alice")),
            asyncio.ensure_future(run("paid", user="bob", priority=5)),
        ]
        await asyncio.gather(*backlog, *late)
    assert order.index("alice") < 5 and order.index("paid") < 5, order


async def test_max_queue_gives_queue_full_with_retry_after(nats_server: NatsServer, nc: NATS) -> None:
    engine = FakeEngine("fake", tokens_per_s=50)
    async with broker(nats_server.url, max_queue=1), worker(nats_server.url, engine, "w1"):
        client = Client(nc)
        running = asyncio.ensure_future(client.complete("occupy", model="fake", max_tokens=50))

        async def started() -> bool:
            return engine.generations == 1

        await eventually(started, what="the first request to run")
        queued = client.generate("waits", model="fake", max_tokens=2, stream=False)
        waiting = asyncio.ensure_future(queued.finish())

        async def in_queue() -> bool:
            return bool(queued.queue_updates)

        await eventually(in_queue, what="the second request to queue")
        with pytest.raises(QueueFull) as info:
            await client.complete("one too many", model="fake", max_tokens=2)
        assert info.value.retry_after_s is not None and info.value.retry_after_s >= 1
        assert (await waiting).usage.completion_tokens == 2
        await running


async def test_max_inflight_cuts_off_a_long_answer_and_frees_the_slot(nats_server: NatsServer, nc: NATS) -> None:
    async with (
        broker(nats_server.url, max_inflight_s=1.0),
        worker(nats_server.url, FakeEngine("fake", tokens_per_s=20), "w1"),
    ):
        client = Client(nc)
        result = await client.complete("go on forever", model="fake", max_tokens=1000)
        assert result.finish_reason == "max_inflight"
        assert 0 < result.usage.completion_tokens < 100
        assert result.text.count(" ") == result.usage.completion_tokens  # what was generated, all of it
        follow_up = await client.complete("next", model="fake", max_tokens=3)
        assert follow_up.finish_reason == "length"
