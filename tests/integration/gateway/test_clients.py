"""The HTTP gateway driven by the real `openai` and `ollama` client packages, streaming and not."""

from __future__ import annotations

import ollama

from gpu_worker.engines.fake import FakeEngine
from iris.launch.nats_server import NatsServer
from tests.conftest import Processes
from tests.integration.gateway_stack import MESSAGES, OPEN_KEY, gateway, metric, openai_client
from tests.integration.services import broker, worker


async def test_openai_chat_and_completions(nats_server: NatsServer) -> None:
    url = nats_server.url
    async with broker(url), worker(url, FakeEngine("fake"), "w1"), gateway(url, "fake") as gw:
        client = openai_client(gw.http.url)  # type: ignore[union-attr]
        models = await client.models.list()
        assert [m.id for m in models.data] == ["fake"]

        whole = await client.chat.completions.create(model="fake", messages=MESSAGES, max_tokens=7, seed=1)  # type: ignore[arg-type]
        assert whole.choices[0].finish_reason == "length"
        assert whole.usage is not None and whole.usage.completion_tokens == 7
        assert len(whole.choices[0].message.content.split()) == 7  # type: ignore[union-attr]

        stream = await client.chat.completions.create(
            model="fake",
            messages=MESSAGES,
            max_tokens=7,
            seed=1,
            stream=True,
            stream_options={"include_usage": True},  # type: ignore[arg-type]
        )
        parts, usage, reasons = [], None, []
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                parts.append(choice.delta.content or "")
                reasons.append(choice.finish_reason)
        assert "".join(parts) == whole.choices[0].message.content  # FakeEngine: same prompt, same text
        assert reasons[-1] == "length" and usage is not None and usage.total_tokens == usage.prompt_tokens + 7

        completion = await client.completions.create(model="fake", prompt="Once upon a time", max_tokens=4)
        assert completion.usage is not None and completion.usage.completion_tokens == 4
        streamed = await client.completions.create(model="fake", prompt="Once upon a time", max_tokens=4, stream=True)
        assert "".join([c.choices[0].text async for c in streamed]) == completion.choices[0].text
        assert (
            metric(gw, "iris_gateway_requests_total", api="openai", route="/v1/completions", status="200", code="") == 2
        )


async def test_ollama_generate_chat_tags_ps(nats_server: NatsServer) -> None:
    url = nats_server.url
    async with broker(url), worker(url, FakeEngine("fake"), "w1"), gateway(url, "fake") as gw:
        client = ollama.AsyncClient(host=gw.http.url, headers={"Authorization": f"Bearer {OPEN_KEY}"})  # type: ignore[union-attr]
        listed = await client.list()
        assert [m.model for m in listed.models] == ["fake:latest"]
        running = await client.ps()
        assert running.models[0].model == "fake:latest"

        whole = await client.generate(model="fake:latest", prompt="Why is the sky blue?", options={"num_predict": 6})
        assert whole.done and whole.done_reason == "length" and whole.eval_count == 6
        parts = [
            part
            async for part in await client.generate(
                model="fake", prompt="Why is the sky blue?", stream=True, options={"num_predict": 6}
            )
        ]
        assert "".join(p.response for p in parts) == whole.response
        assert parts[-1].done and parts[-1].eval_count == 6 and not any(p.done for p in parts[:-1])

        chat = await client.chat(model="fake", messages=MESSAGES, options={"num_predict": 5, "temperature": 0})
        assert chat.message.role == "assistant" and len(chat.message.content.split()) == 5  # type: ignore[union-attr]
        chunks = [
            c async for c in await client.chat(model="fake", messages=MESSAGES, stream=True, options={"num_predict": 5})
        ]
        assert "".join(c.message.content or "" for c in chunks) == chat.message.content
        assert chunks[-1].done and chunks[-1].prompt_eval_count == chat.prompt_eval_count


async def test_real_model_through_both_clients(nats_server: NatsServer, processes: Processes) -> None:
    url = nats_server.url
    processes.start("worker", "gpu_worker", "--nats", url, "--worker-id", "real")  # the embedded Gemma 3 270M
    async with broker(url), gateway(url, "gemma3-270m", ready_timeout_s=120) as gw:
        base = gw.http.url  # type: ignore[union-attr]
        question = [{"role": "user", "content": "Name the color of the sky in one word."}]
        answer = await openai_client(base).chat.completions.create(
            model="gemma3-270m",
            messages=question,
            max_tokens=12,
            temperature=0,
            seed=3,  # type: ignore[arg-type]
        )
        text = answer.choices[0].message.content or ""
        assert text.strip() and answer.usage is not None and 0 < answer.usage.completion_tokens <= 12
        chunks = [
            c
            async for c in await ollama.AsyncClient(host=base).chat(
                model="gemma3:270m",
                messages=question,
                stream=True,
                options={"num_predict": 12, "temperature": 0, "seed": 3},
            )
        ]
        assert "".join(c.message.content or "" for c in chunks) == text  # greedy: same answer through both APIs
        assert chunks[-1].eval_count == answer.usage.completion_tokens
