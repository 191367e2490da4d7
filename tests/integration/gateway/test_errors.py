"""Overload, failure and disconnects through the HTTP gateway, as the `openai` and `ollama` clients see them."""

from __future__ import annotations

import asyncio

import httpx
import ollama
import openai
import pytest

from broker.service import BrokerService
from gpu_worker.engines.fake import FakeEngine
from iris.launch.nats_server import NatsServer
from tests.integration.gateway_stack import LIMITED_KEY, MESSAGES, OPEN_KEY, PAID_KEY, gateway, metric, openai_client
from tests.integration.services import broker, eventually, wait_stream_empty, worker


async def _occupied(service: BrokerService, running: int, waiting: int) -> None:
    async def state() -> bool:
        return service.scheduler.running("fake") == running and service.scheduler.waiting("fake") == waiting

    await eventually(state, what=f"{running} running and {waiting} waiting")


async def _slot_freed(service: BrokerService, nc_url: str) -> None:
    async def idle() -> bool:
        return service.scheduler.running("fake") == 0 and service.scheduler.waiting("fake") == 0

    await eventually(idle, what="the slot to be freed")


def _long_chat(url: str, key: str = OPEN_KEY) -> asyncio.Task[object]:
    client = openai_client(url, key)
    return asyncio.ensure_future(client.chat.completions.create(model="fake", messages=MESSAGES, max_tokens=2000))  # type: ignore[arg-type]


async def test_unauthorized_and_forbidden(nats_server: NatsServer) -> None:
    url = nats_server.url
    async with broker(url), worker(url, FakeEngine("fake"), "w1"), gateway(url, "fake") as gw:
        base = gw.http.url  # type: ignore[union-attr]
        with pytest.raises(openai.AuthenticationError) as wrong:
            await openai_client(base, "not-a-key-at-all").chat.completions.create(model="fake", messages=MESSAGES)  # type: ignore[arg-type]
        assert wrong.value.response.headers["x-iris-error"] == "unauthorized"
        with pytest.raises(ollama.ResponseError) as wrong_ollama:
            await ollama.AsyncClient(host=base, headers={"Authorization": "Bearer nope-nope-nope"}).generate(
                "fake", "hi"
            )
        assert wrong_ollama.value.status_code == 401 and "invalid API key" in wrong_ollama.value.error

        too_high = openai.AsyncOpenAI(
            base_url=f"{base}/v1", api_key=OPEN_KEY, max_retries=0, default_headers={"X-Iris-Priority": "5"}
        )
        with pytest.raises(openai.PermissionDeniedError, match="above this key's maximum 1"):
            await too_high.chat.completions.create(model="fake", messages=MESSAGES)  # type: ignore[arg-type]
        allowed = openai.AsyncOpenAI(
            base_url=f"{base}/v1", api_key=PAID_KEY, max_retries=0, default_headers={"X-Iris-Priority": "5"}
        )
        answer = await allowed.chat.completions.create(model="fake", messages=MESSAGES, max_tokens=2)  # type: ignore[arg-type]
        assert answer.usage is not None and answer.usage.completion_tokens == 2


async def test_rate_limited_key_is_429_with_retry_after(nats_server: NatsServer) -> None:
    url = nats_server.url
    async with broker(url), worker(url, FakeEngine("fake"), "w1"), gateway(url, "fake") as gw:
        limited = openai_client(gw.http.url, LIMITED_KEY)  # type: ignore[union-attr]
        for _ in range(2):
            await limited.chat.completions.create(model="fake", messages=MESSAGES, max_tokens=2)  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError) as limit:
            await limited.chat.completions.create(model="fake", messages=MESSAGES, max_tokens=2)  # type: ignore[arg-type]
        assert limit.value.response.headers["x-iris-error"] == "rate_limited"
        assert 1 <= int(limit.value.response.headers["retry-after"]) <= 30
        other = await openai_client(gw.http.url, OPEN_KEY).chat.completions.create(  # type: ignore[union-attr]
            model="fake",
            messages=MESSAGES,
            max_tokens=2,  # type: ignore[arg-type]
        )
        assert other.usage is not None  # another key's allowance is untouched


async def test_queue_full_is_429_with_retry_after(nats_server: NatsServer) -> None:
    url = nats_server.url
    slow = FakeEngine("fake", tokens_per_s=20)
    async with broker(url, max_queue=1) as service, worker(url, slow, "w1"), gateway(url, "fake") as gw:
        base = gw.http.url  # type: ignore[union-attr]
        running = _long_chat(base)
        await _occupied(service, running=1, waiting=0)
        waiting = _long_chat(base)
        await _occupied(service, running=1, waiting=1)
        with pytest.raises(openai.RateLimitError) as full:
            await openai_client(base, OPEN_KEY).chat.completions.create(model="fake", messages=MESSAGES)  # type: ignore[arg-type]
        assert full.value.response.headers["x-iris-error"] == "queue_full"
        assert int(full.value.response.headers["retry-after"]) >= 1
        with pytest.raises(ollama.ResponseError) as full_ollama:
            await ollama.AsyncClient(host=base).chat(model="fake", messages=MESSAGES)
        assert full_ollama.value.status_code == 429 and "max_queue" in full_ollama.value.error
        for task in (running, waiting):  # the clients give up: both requests leave, the slot is freed
            task.cancel()
        await _slot_freed(service, url)


async def test_deadline_exceeded_in_queue_is_504(nats_server: NatsServer) -> None:
    url = nats_server.url
    slow = FakeEngine("fake", tokens_per_s=20)
    async with broker(url) as service, worker(url, slow, "w1"), gateway(url, "fake") as gw:
        base = gw.http.url  # type: ignore[union-attr]
        running = _long_chat(base)
        await _occupied(service, running=1, waiting=0)
        hurried = openai.AsyncOpenAI(
            base_url=f"{base}/v1", api_key=OPEN_KEY, max_retries=0, default_headers={"X-Iris-Deadline": "1"}
        )
        with pytest.raises(openai.InternalServerError) as late:
            await hurried.chat.completions.create(model="fake", messages=MESSAGES)  # type: ignore[arg-type]
        assert late.value.status_code == 504 and late.value.response.headers["x-iris-error"] == "deadline_exceeded"
        running.cancel()
        await _slot_freed(service, url)


async def test_no_capacity_is_503_with_retry_after(nats_server: NatsServer) -> None:
    url = nats_server.url
    async with broker(url, worker_timeout_s=1.0) as service, gateway(url) as gw:
        async with worker(url, FakeEngine("fake"), "w1"):

            async def served() -> bool:
                return "fake" in gw.models.live()

            await eventually(served, what="the worker's heartbeat at the gateway")

        async def forgotten() -> bool:
            pool = service.scheduler.pools.get("fake")
            return pool is None or not pool.workers  # an empty pool without workers is dropped

        await eventually(forgotten, what="the broker to drop the stopped worker")
        with pytest.raises(openai.InternalServerError) as none:
            await openai_client(gw.http.url).chat.completions.create(model="fake", messages=MESSAGES)  # type: ignore[union-attr, arg-type]
        assert none.value.status_code == 503 and none.value.response.headers["x-iris-error"] == "no_capacity"
        assert int(none.value.response.headers["retry-after"]) >= 1


async def test_client_disconnect_mid_stream_frees_the_slot(nats_server: NatsServer) -> None:
    url = nats_server.url
    slow = FakeEngine("fake", tokens_per_s=20)
    async with broker(url) as service, worker(url, slow, "w1"), gateway(url, "fake") as gw:
        base = gw.http.url  # type: ignore[union-attr]
        body = {"model": "fake", "messages": MESSAGES, "options": {"num_predict": 5000}}
        async with httpx.AsyncClient(timeout=30) as http:
            async with http.stream("POST", f"{base}/api/chat", json=body) as response:
                lines = response.aiter_lines()
                assert '"done":false' in await anext(lines)
                assert service.scheduler.running("fake") == 1
        await _slot_freed(service, url)  # the stream was closed after one line: cancelled, slot free
        await wait_stream_empty(service.nc)
        assert metric(gw, "iris_gateway_client_disconnects_total", api="ollama") == 1

        impatient = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=OPEN_KEY, max_retries=0, timeout=1.0)
        with pytest.raises(openai.APITimeoutError):  # non-streaming: the client hangs up while it runs
            await impatient.chat.completions.create(model="fake", messages=MESSAGES, max_tokens=5000)  # type: ignore[arg-type]
        await _slot_freed(service, url)
        assert slow.generations == 2
