"""HTTP `Idempotency-Key` on both dialects, through the real `openai` and `ollama` clients: a retry gets
the first call's answer (same text, same usage) without a second run, while it runs it streams the rest of
the same answer, and two callers that pick the same key never share an answer."""

from __future__ import annotations

import asyncio

import httpx
import ollama

from gpu_worker.engines.fake import FakeEngine
from iris.launch.nats_server import NatsServer
from tests.integration.gateway_stack import MESSAGES, OPEN_KEY, PAID_KEY, gateway, openai_client
from tests.integration.services import broker, worker


async def test_openai_retry_gets_the_first_answer(nats_server: NatsServer) -> None:
    engine = FakeEngine("fake")
    url = nats_server.url
    async with broker(url), worker(url, engine, "w1"), gateway(url, "fake") as gw:
        client = openai_client(gw.http.url)  # type: ignore[union-attr]
        key = {"Idempotency-Key": "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d"}
        calls = [
            await client.chat.completions.create(
                model="fake",
                messages=MESSAGES,
                max_tokens=6,
                temperature=1.5,
                extra_headers=key,  # type: ignore[arg-type]
            )
            for _ in range(2)
        ]
        streamed = await client.chat.completions.create(
            model="fake",
            messages=MESSAGES,
            max_tokens=6,
            stream=True,
            extra_headers=key,  # type: ignore[arg-type]
        )
        text = "".join([c.choices[0].delta.content or "" async for c in streamed if c.choices])
    first, again = calls
    assert again.choices[0].message.content == first.choices[0].message.content == text
    assert again.usage == first.usage and first.usage is not None and first.usage.completion_tokens == 6
    assert engine.generations == 1


async def test_the_same_key_on_ollama_and_openai_is_one_request(nats_server: NatsServer) -> None:
    engine = FakeEngine("fake")
    url = nats_server.url
    async with broker(url), worker(url, engine, "w1"), gateway(url, "fake") as gw:
        base = gw.http.url  # type: ignore[union-attr]
        key = {"Idempotency-Key": "order-7"}
        local = ollama.AsyncClient(host=base, headers={"Authorization": f"Bearer {PAID_KEY}", **key})
        chat = await local.chat(model="fake", messages=MESSAGES, options={"num_predict": 5})
        generated = await local.generate(
            model="fake", prompt="ignored: the key names the request", options={"num_predict": 5}
        )
        remote = await openai_client(base).chat.completions.create(
            model="fake",
            messages=MESSAGES,
            max_tokens=5,
            extra_headers=key,  # type: ignore[arg-type]
        )
    assert chat.message.content == generated.response == remote.choices[0].message.content
    assert chat.eval_count == generated.eval_count == 5 and remote.usage is not None
    assert remote.usage.completion_tokens == 5 and remote.usage.prompt_tokens == chat.prompt_eval_count
    assert engine.generations == 1


async def test_callers_with_the_same_key_do_not_share_answers(nats_server: NatsServer) -> None:
    engine = FakeEngine("fake")
    url = nats_server.url
    async with broker(url), worker(url, engine, "w1"), gateway(url, "fake") as gw:
        base = gw.http.url  # type: ignore[union-attr]
        key = {"Idempotency-Key": "shared-key"}
        alice = await openai_client(base, PAID_KEY).completions.create(
            model="fake", prompt="alice's prompt", max_tokens=4, extra_headers=key
        )
        bob = await openai_client(base, OPEN_KEY).completions.create(
            model="fake", prompt="bob's prompt", max_tokens=4, extra_headers=key
        )
    assert alice.choices[0].text != bob.choices[0].text
    assert engine.generations == 2


async def test_retry_while_streaming_gets_the_rest_of_the_same_answer(nats_server: NatsServer) -> None:
    engine = FakeEngine("fake", slots=1, tokens_per_s=30)
    url = nats_server.url
    async with broker(url), worker(url, engine, "w1"), gateway(url, "fake") as gw:
        client = openai_client(gw.http.url)  # type: ignore[union-attr]
        key = {"Idempotency-Key": "long-stream"}
        first_parts: list[str] = []
        under_way = asyncio.Event()

        async def first_call() -> None:
            stream = await client.completions.create(
                model="fake", prompt="a long story", max_tokens=30, stream=True, extra_headers=key
            )
            async for chunk in stream:
                first_parts.append(chunk.choices[0].text if chunk.choices else "")
                if len(first_parts) == 4:
                    under_way.set()

        reading = asyncio.ensure_future(first_call())
        await under_way.wait()
        retry = await client.completions.create(
            model="fake", prompt="a long story", max_tokens=30, stream=True, extra_headers=key
        )
        rest = "".join([chunk.choices[0].text async for chunk in retry if chunk.choices])
        await reading
    whole = "".join(first_parts)
    assert rest and whole.endswith(rest) and len(rest) < len(whole)  # the rest of the same answer
    assert engine.generations == 1


async def test_a_bad_idempotency_key_is_refused(nats_server: NatsServer) -> None:
    url = nats_server.url
    async with broker(url), worker(url, FakeEngine("fake"), "w1"), gateway(url, "fake") as gw:
        async with httpx.AsyncClient(base_url=gw.http.url) as http:  # type: ignore[union-attr]
            reply = await http.post(
                "/api/generate",
                json={"model": "fake", "prompt": "hi", "stream": False},
                headers={"Authorization": f"Bearer {PAID_KEY}", "Idempotency-Key": "x" * 256},
            )
    assert reply.status_code == 400
    assert "Idempotency-Key" in reply.json()["error"]
