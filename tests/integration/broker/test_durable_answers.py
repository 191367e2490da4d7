"""Durable answers over the NATS SDK: a retry with the same idempotency key gets the first call's answer
(the stored final once it ended, the rest of the stream while it runs), never a second run; every final,
a broker's rejection too, is in IRIS_ANSWERS before its request leaves the stream."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from gpu_worker.engines.fake import FakeEngine
from iris.launch.nats_server import NatsServer
from iris.sdk.client import Client
from runtime.answers import fetch_final, store_final
from schemas import headers as h
from schemas.errors import DeadlineExceeded
from schemas.messages import Chunk, result_decoder
from schemas.subjects import ANSWER_STREAM, answer_subject
from tests.integration.broker.test_dead_letters import iris_cli
from tests.integration.services import broker, eventually, wait_stream_empty, worker
from tests.integration.tcp_proxy import TcpProxy

REPO = Path(__file__).resolve().parents[3]


async def test_retry_after_finish_gets_the_stored_answer(nats_server: NatsServer, nc: NATS) -> None:
    engine = FakeEngine("fake")
    async with broker(nats_server.url), worker(nats_server.url, engine, "w1"):
        client = Client(nc)
        first = await client.complete("pay once", model="fake", max_tokens=5, idempotency_key="order-42")
        again = await client.complete("pay once", model="fake", max_tokens=5, idempotency_key="order-42")
        chunks = [c async for c in client.generate("pay once", model="fake", max_tokens=5, idempotency_key="order-42")]
        await wait_stream_empty(nc)
        stored = await fetch_final(nc, "order-42", None)
    assert again == first  # text, usage, timings, worker: the stored copy, not a second run
    assert chunks == []  # a finished request has only its final left to give
    assert engine.generations == 1
    assert stored is not None and stored.kind == h.KIND_RESULT and result_decoder.decode(stored.data) == first
    assert stored.subject == answer_subject("order-42")


async def test_retry_while_running_streams_the_rest_of_the_same_answer(nats_server: NatsServer, nc: NATS) -> None:
    engine = FakeEngine("fake", slots=1, tokens_per_s=40)
    async with broker(nats_server.url), worker(nats_server.url, engine, "w1"):
        client = Client(nc)
        first = client.generate("a long answer", model="fake", max_tokens=40, idempotency_key="long-1")
        first_chunks: list[Chunk] = []
        under_way = asyncio.Event()

        async def read_first() -> None:
            async for chunk in first:
                first_chunks.append(chunk)
                if len(first_chunks) == 5:
                    under_way.set()

        reading = asyncio.ensure_future(read_first())
        await under_way.wait()
        # A second caller with the same key (a retry after a network error) joins the running request.
        retry = client.generate("a long answer", model="fake", max_tokens=40, idempotency_key="long-1")
        rest = [chunk async for chunk in retry]
        await reading
        assert retry.exchange is not None and retry.exchange.joined
    assert retry.result is not None and retry.result.usage.completion_tokens == 40
    assert first.result == retry.result  # the same answer, whole, for both
    assert rest and rest[0].index >= 5  # joined mid-answer: only what came after
    assert [c.index for c in rest] == list(range(rest[0].index, rest[0].index + len(rest)))
    assert retry.result.text.endswith("".join(c.text for c in rest))
    assert engine.generations == 1


async def test_a_rejection_is_stored_and_a_retry_gets_it_at_once(nats_server: NatsServer, nc: NATS) -> None:
    slow = FakeEngine("fake", slots=1, tokens_per_s=20)
    async with broker(nats_server.url), worker(nats_server.url, slow, "w1"):
        client = Client(nc)
        long_run = asyncio.ensure_future(client.complete("occupy the slot", model="fake", max_tokens=60))
        with pytest.raises(DeadlineExceeded):
            await client.complete("too late", model="fake", max_tokens=5, deadline_s=1.0, idempotency_key="late-1")

        async def stored() -> bool:
            return await fetch_final(nc, "late-1", None) is not None

        await eventually(stored, 10, "the broker's deadline_exceeded in IRIS_ANSWERS")
        with pytest.raises(DeadlineExceeded):  # at once: long before this retry's own 30 s deadline
            await asyncio.wait_for(
                client.complete("too late", model="fake", max_tokens=5, deadline_s=30, idempotency_key="late-1"), 10
            )
        await long_run
    assert slow.generations == 1


async def test_answers_leave_with_the_window(nats_server: NatsServer, nc: NATS) -> None:
    async with broker(nats_server.url, duplicate_window_s=3600):
        info = await nc.jetstream().stream_info(ANSWER_STREAM)
    assert info.config.max_age == 3600 and info.config.duplicate_window == 3600
    assert info.config.subjects == ["iris.answer.>", "iris.progress.>"] and info.config.allow_direct


async def test_one_final_per_request_the_first_stays(nats_server: NatsServer, nc: NATS) -> None:
    """A second final (an at-least-once re-run) counts as stored but is refused: the first is what a retry
    reads. Many finals of one event-loop turn are stored together, each acknowledged."""
    async with broker(nats_server.url):
        finals = [store_final(nc, f"many-{i}", None, h.KIND_RESULT, b'{"n": %d}' % i) for i in range(300)]
        assert all(await asyncio.gather(*finals))
        assert await store_final(nc, "many-7", None, h.KIND_ERROR, b'{"second": true}')
        stored = await fetch_final(nc, "many-7", None)
        info = await nc.jetstream().stream_info(ANSWER_STREAM)
    assert stored is not None and (stored.kind, stored.data) == (h.KIND_RESULT, b'{"n": 7}')
    assert info.state.messages == 300


async def test_a_final_sent_while_disconnected_is_read_after_the_reconnect(nats_server: NatsServer, nc: NATS) -> None:
    engine = FakeEngine("fake", slots=1, tokens_per_s=20)
    async with broker(nats_server.url), worker(nats_server.url, engine, "w1"), TcpProxy(nats_server.port) as proxy:
        async with await Client.connect(proxy.url, reconnect_time_wait=0.1) as client:
            answer = asyncio.ensure_future(
                client.complete("answered away", model="fake", max_tokens=20, deadline_s=60, idempotency_key="away")
            )
            try:
                await eventually(lambda: _running(engine), 10, "the request to start on the worker")
                proxy.cut()  # the client's node is gone: the final is sent while nobody can hear it

                async def stored() -> bool:
                    return await fetch_final(nc, "away", None) is not None

                await eventually(stored, 10, "the final in IRIS_ANSWERS")
                proxy.restore()
                result = await asyncio.wait_for(answer, 15)  # long before its deadline: read from the store
            finally:
                answer.cancel()
            assert result.usage.completion_tokens == 20 and client.nc.stats["reconnects"] >= 1
    assert engine.generations == 1


async def _running(engine: FakeEngine) -> bool:
    return engine.generations >= 1


async def test_iris_answers_lists_and_shows_them(nats_server: NatsServer, nc: NATS) -> None:
    async with broker(nats_server.url), worker(nats_server.url, FakeEngine("fake"), "w1"):
        client = Client(nc)
        result = await client.complete("for the operator", model="fake", max_tokens=3, idempotency_key="ops-1")
        with pytest.raises(DeadlineExceeded):
            await client.complete("x", model="fake", max_tokens=3, deadline_s=0.001, idempotency_key="ops-2")
        await eventually(lambda: _stored(nc, "ops-2"), 10, "the broker's error in IRIS_ANSWERS")
        url = nats_server.url
        listed = json.loads((await asyncio.to_thread(iris_cli, "answers", "list", "--json", "--nats", url)).stdout)
        shown = await asyncio.to_thread(iris_cli, "answers", "show", "ops-1", "--nats", url)
        missing = await asyncio.to_thread(iris_cli, "answers", "show", "never-sent", "--nats", url)
    rows = {row["request_id"]: row for row in listed}
    assert rows["ops-1"]["kind"] == "result" and rows["ops-1"]["completion_tokens"] == 3
    assert rows["ops-2"]["kind"] == "error" and rows["ops-2"]["ending"] == "deadline_exceeded"
    assert json.loads(shown.stdout)["answer"]["text"] == result.text
    assert missing.returncode == 1 and "no stored answer" in missing.stderr


async def _stored(nc: NATS, request_id: str) -> bool:
    return await fetch_final(nc, request_id, None) is not None


async def test_the_raw_nats_example_gets_the_stored_answer_on_a_retry(nats_server: NatsServer) -> None:
    engine = FakeEngine("fake")
    example = [sys.executable, str(REPO / "examples" / "raw_nats_client.py"), "hello", "--model", "fake"]
    args = [*example, "--nats", nats_server.url, "--max-tokens", "6", "--key", "raw-key-1"]
    async with broker(nats_server.url), worker(nats_server.url, engine, "w1"):
        runs = [await asyncio.to_thread(subprocess.run, args, capture_output=True, text=True, timeout=60) for _ in "ab"]
    first, again = (json.loads(run.stdout.split("RESULT ", 1)[1]) for run in runs)
    assert all(run.returncode == 0 for run in runs), runs[1].stderr
    assert again == first and first["usage"]["completion_tokens"] == 6
    assert engine.generations == 1
