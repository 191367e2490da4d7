"""Streaming through a full queue (max concurrency 1, a long request running): the response commits to
200 once the request waits, carries its queue position and keep-alives, then the answer; the official
`openai` and `ollama` clients read it with an idle timeout shorter than the wait; a deadline that passes in
the queue after the commit arrives as an in-stream error both clients raise; a non-streamed call keeps its
real status. Timings are the real ones scaled down 10x: keep-alive 0.4 s (≤ 10 s), client idle timeout
1.5 s (15 s), time in the queue about 4 s (40 s)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import ollama
import openai
import pytest

from gateway.service import GatewayService
from gpu_worker.engines.fake import FakeEngine
from iris.launch.nats_server import NatsServer
from tests.integration.gateway_stack import OPEN_KEY, gateway
from tests.integration.services import broker, eventually, worker

KEEPALIVE_S, IDLE_TIMEOUT_S, LONG_TOKENS, TOKENS_PER_S = 0.4, 1.5, 40, 10.0  # the long request runs 4 s
AUTH = {"Authorization": f"Bearer {OPEN_KEY}"}
MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]


@asynccontextmanager
async def full_queue(url: str) -> AsyncIterator[tuple[GatewayService, FakeEngine]]:
    engine = FakeEngine("fake", tokens_per_s=TOKENS_PER_S)
    options = {"stream_keepalive_s": KEEPALIVE_S, "queue_commit_after_s": 0.2}
    async with broker(url, max_concurrency=1), worker(url, engine, "w1"), gateway(url, "fake", **options) as gw:
        yield gw, engine


async def hold_the_slot(base: str, engine: FakeEngine) -> asyncio.Task[httpx.Response]:
    """A long non-streamed request that holds the only slot; returns once it runs."""
    started = engine.generations
    body = {"model": "fake", "prompt": "long", "max_tokens": LONG_TOKENS}
    client = httpx.AsyncClient(timeout=60)
    task = asyncio.create_task(client.post(f"{base}/v1/completions", json=body, headers=AUTH))
    task.add_done_callback(lambda _: asyncio.ensure_future(client.aclose()))

    async def running() -> bool:
        return engine.generations > started

    await eventually(running, 10, "the long request to start")
    return task


def idle_timeout() -> httpx.Timeout:
    return httpx.Timeout(IDLE_TIMEOUT_S, connect=5.0)


async def test_openai_stream_waits_in_queue_past_its_idle_timeout(nats_server: NatsServer) -> None:
    async with full_queue(nats_server.url) as (gw, engine):
        base = gw.http.url  # type: ignore[union-attr]
        long = await hold_the_slot(base, engine)
        client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=OPEN_KEY, max_retries=0, timeout=idle_timeout())
        stream = await client.chat.completions.create(model="fake", messages=MESSAGES, max_tokens=5, stream=True)  # type: ignore[arg-type]
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert len("".join(parts).split()) == 5
        assert (await long).status_code == 200

        long = await hold_the_slot(base, engine)
        body = {"model": "fake", "messages": MESSAGES, "max_tokens": 3, "stream": True}
        async with (
            httpx.AsyncClient(timeout=idle_timeout()) as raw,
            raw.stream("POST", f"{base}/v1/chat/completions", json=body, headers=AUTH) as response,
        ):
            lines = [line async for line in response.aiter_lines() if line]
        await long
    assert response.status_code == 200
    queued = [json.loads(line.removeprefix(": iris-queue ")) for line in lines if line.startswith(": iris-queue")]
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data:"))
    assert queued and queued[0]["position"] >= 0 and queued[0]["eta_s"] >= 0
    assert all(not line.startswith("data:") for line in lines[:first_data]) and first_data >= 3  # fed while waiting
    assert lines[-1] == "data: [DONE]"


async def test_ollama_stream_waits_in_queue_past_its_idle_timeout(nats_server: NatsServer) -> None:
    async with full_queue(nats_server.url) as (gw, engine):
        base = gw.http.url  # type: ignore[union-attr]
        long = await hold_the_slot(base, engine)
        client = ollama.AsyncClient(host=base, headers=AUTH, timeout=idle_timeout())
        parts = [
            p async for p in await client.generate(model="fake", prompt="hi", stream=True, options={"num_predict": 4})
        ]
        await long

        long = await hold_the_slot(base, engine)
        body = {"model": "fake", "messages": MESSAGES, "options": {"num_predict": 2}}
        async with (
            httpx.AsyncClient(timeout=idle_timeout()) as raw,
            raw.stream("POST", f"{base}/api/chat", json=body, headers=AUTH) as response,
        ):
            lines = [json.loads(line) async for line in response.aiter_lines() if line]
        await long
    waiting = [p for p in parts if not p.done and not p.response]
    assert len(waiting) >= 3  # the client reads the queue lines as answer parts without text
    assert len("".join(p.response for p in parts).split()) == 4 and parts[-1].done and parts[-1].eval_count == 4
    queued = [line["iris_queue"] for line in lines if "iris_queue" in line]
    assert len(queued) >= 3 and queued[0]["position"] >= 0 and queued[0]["eta_s"] >= 0
    assert all(line["message"]["content"] == "" and not line["done"] for line in lines[: len(queued)])
    assert lines[-1]["done"] and lines[-1]["eval_count"] == 2


async def test_deadline_in_the_queue_after_commit_is_an_in_stream_error(nats_server: NatsServer) -> None:
    async with full_queue(nats_server.url) as (gw, engine):
        base = gw.http.url  # type: ignore[union-attr]
        long = await hold_the_slot(base, engine)
        short = {"X-Iris-Deadline": "1.5"}
        oai = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=OPEN_KEY, max_retries=0, timeout=idle_timeout())
        stream = await oai.chat.completions.create(  # type: ignore[call-overload]
            model="fake", messages=MESSAGES, max_tokens=5, stream=True, extra_headers=short
        )
        with pytest.raises(openai.APIError, match="deadline"):
            async for _ in stream:
                pass
        olla = ollama.AsyncClient(host=base, headers={**AUTH, **short}, timeout=idle_timeout())
        with pytest.raises(ollama.ResponseError, match="deadline"):
            async for _ in await olla.chat(model="fake", messages=MESSAGES, stream=True):
                pass
        await long
        long = await hold_the_slot(base, engine)
        async with httpx.AsyncClient(timeout=30) as raw:
            whole = await raw.post(
                f"{base}/api/chat",
                json={"model": "fake", "messages": MESSAGES, "stream": False},
                headers={**AUTH, **short},
            )
        await long
    # Not streamed: a real status, whether the broker now sees at admission that the deadline cannot be met
    # (it has learned how long requests take) or the deadline passes in the queue.
    code = whole.headers["x-iris-error"]
    assert (whole.status_code, code) in ((504, "deadline_exceeded"), (429, "deadline_unmeetable"))
    assert code == "deadline_exceeded" or int(whole.headers["retry-after"]) >= 1
