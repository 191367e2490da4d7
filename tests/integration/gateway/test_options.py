"""Every sampling option, structured-output and logprobs field of the Ollama and OpenAI dialects reaches
the engine under its Iris name (a field dropped on the way fails here), logprobs come back in each API's
shape, and every field Iris does not honour is a 400 that names it."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import openai
import pytest

from gpu_worker.engines.fake import FakeEngine
from iris.launch.nats_server import NatsServer
from schemas.messages import GenerateRequest, OutputFormat
from tests.integration.gateway_stack import OPEN_KEY, gateway
from tests.integration.services import broker, worker


@asynccontextmanager
async def fake_stack(url: str) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    """Broker, one FakeEngine worker and a gateway: the gateway's base URL and an HTTP client."""
    async with (
        broker(url),
        worker(url, FakeEngine("fake"), "w1"),
        gateway(url, "fake") as gw,
        httpx.AsyncClient() as http,
    ):
        yield gw.http.url, http  # type: ignore[union-attr]


AUTH = {"Authorization": f"Bearer {OPEN_KEY}"}
MESSAGES = [{"role": "user", "content": "hi"}]
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
OLLAMA_OPTIONS = {
    "num_predict": 3,
    "temperature": 0.5,
    "top_p": 0.9,
    "top_k": 7,
    "min_p": 0.2,
    "seed": 11,
    "stop": ["zz"],
    "repeat_penalty": 1.3,
    "repeat_last_n": 32,
    "presence_penalty": 0.4,
    "frequency_penalty": 0.6,
}
OPENAI_FIELDS = {
    "max_tokens": 3,
    "temperature": 0.5,
    "top_p": 0.9,
    "top_k": 7,
    "min_p": 0.2,
    "seed": 11,
    "stop": ["zz"],
    "repeat_penalty": 1.3,
    "presence_penalty": 0.4,
    "frequency_penalty": 0.6,
    "logit_bias": {"42": -5.0},
    "logprobs": True,
    "top_logprobs": 2,
    "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA, "strict": True}},
}
REFUSED = [
    ("/api/chat", {"options": {"num_ctx": 4096}}, "num_ctx"),
    ("/api/chat", {"options": {"mirostat": 2}}, "mirostat"),
    ("/api/chat", {"options": {"typical_p": 0.5}}, "typical_p"),
    ("/api/chat", {"options": {"no_such_option": 1}}, "no_such_option"),
    ("/api/chat", {"keep_alive": 0}, "keep_alive"),
    ("/api/chat", {"think": True}, "think"),
    ("/api/chat", {"format": "yaml"}, "format"),
    ("/api/generate", {"prompt": "hi", "context": [1, 2]}, "context"),
    ("/api/generate", {"prompt": "hi", "template": "{{ .Prompt }}"}, "template"),
    ("/api/chat", {"unknown_top_level": 1}, "unknown_top_level"),
    ("/v1/chat/completions", {"tools": [{"type": "function"}]}, "tools"),
    ("/v1/chat/completions", {"tool_choice": "required"}, "tool_choice"),
    ("/v1/chat/completions", {"response_format": {"type": "xml"}}, "response_format"),
    ("/v1/chat/completions", {"store": True}, "store"),
    ("/v1/chat/completions", {"modalities": ["audio"]}, "modalities"),
    ("/v1/chat/completions", {"reasoning_effort": "high"}, "reasoning_effort"),
    ("/v1/chat/completions", {"logit_bias": {"x": 1}}, "logit_bias"),
    ("/v1/chat/completions", {"top_logprobs": 3}, "logprobs"),
    ("/v1/chat/completions", {"made_up_field": 1}, "made_up_field"),
    ("/v1/completions", {"best_of": 3}, "best_of"),
    ("/v1/completions", {"max_tokens": 4, "min_tokens": 5}, "min_tokens"),
]


async def test_every_option_reaches_the_engine(nats_server: NatsServer) -> None:
    url, engine = nats_server.url, FakeEngine("fake")
    async with broker(url), worker(url, engine, "w1"), gateway(url, "fake") as gw, httpx.AsyncClient() as http:
        base = gw.http.url  # type: ignore[union-attr]
        body = {"model": "fake", "messages": MESSAGES, "stream": False, "options": OLLAMA_OPTIONS, "format": SCHEMA}
        assert (await http.post(f"{base}/api/chat", json=body, headers=AUTH)).status_code == 200
        from_ollama = engine.last_request
        body = {"model": "fake", "messages": MESSAGES, **OPENAI_FIELDS}
        assert (await http.post(f"{base}/v1/chat/completions", json=body, headers=AUTH)).status_code == 200
        from_openai = engine.last_request
        body = {"model": "fake", "prompt": "hi", "max_tokens": 3, "min_tokens": 3}  # vLLM's extension
        assert (await http.post(f"{base}/v1/completions", json=body, headers=AUTH)).status_code == 200
        assert engine.last_request.min_tokens == 3  # type: ignore[union-attr]
    shared = {k: v for k, v in OLLAMA_OPTIONS.items() if k not in ("num_predict", "repeat_last_n")}
    assert from_ollama == GenerateRequest(
        messages=from_ollama.messages,
        max_tokens=3,
        repeat_last_n=32,
        stream=False,
        **shared,  # type: ignore[union-attr]
        response_format=OutputFormat(json_schema=SCHEMA),
    )
    assert from_openai == GenerateRequest(
        messages=from_openai.messages,
        max_tokens=3,
        stream=False,
        **shared,
        logit_bias={42: -5.0},  # type: ignore[union-attr]
        logprobs=True,
        top_logprobs=2,
        response_format=OutputFormat(json_schema=SCHEMA),
    )


async def test_logprobs_in_each_api_shape(nats_server: NatsServer) -> None:
    url = nats_server.url
    async with broker(url), worker(url, FakeEngine("fake"), "w1"), gateway(url, "fake") as gw:
        base = gw.http.url  # type: ignore[union-attr]
        client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=OPEN_KEY, max_retries=0)
        chat = await client.chat.completions.create(
            model="fake",
            messages=MESSAGES,
            max_tokens=4,
            logprobs=True,
            top_logprobs=3,  # type: ignore[arg-type]
        )
        streamed = await client.chat.completions.create(
            model="fake",
            messages=MESSAGES,
            max_tokens=4,
            logprobs=True,
            stream=True,  # type: ignore[arg-type]
        )
        stream_tokens = [
            t.token
            async for c in streamed
            if c.choices and c.choices[0].logprobs
            for t in c.choices[0].logprobs.content or []
        ]
        legacy = await client.completions.create(model="fake", prompt="hi", max_tokens=4, logprobs=2)
        async with httpx.AsyncClient() as http:
            body = {"model": "fake", "prompt": "hi", "stream": False, "logprobs": True, "top_logprobs": 2}
            body["options"] = {"num_predict": 4}
            ollama_body = (await http.post(f"{base}/api/generate", json=body, headers=AUTH)).json()
    content = chat.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and "".join(t.token for t in content) == chat.choices[0].message.content
    assert all(math.isclose(t.logprob, -math.log(10)) and len(t.top_logprobs) == 3 for t in content)
    assert "".join(stream_tokens) == chat.choices[0].message.content  # same prompt, same fake answer
    tokens = legacy.choices[0].logprobs.tokens if legacy.choices[0].logprobs else None
    assert tokens is not None and "".join(tokens) == legacy.choices[0].text
    offsets = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    assert legacy.choices[0].logprobs.text_offset == offsets  # type: ignore[union-attr]
    assert len(ollama_body["logprobs"]) == 4 and len(ollama_body["logprobs"][0]["top_logprobs"]) == 2


async def test_fields_iris_does_not_honour_are_400_naming_them(nats_server: NatsServer) -> None:
    async with fake_stack(nats_server.url) as (base, http):
        for path, extra, named in REFUSED:
            body: dict[str, Any] = {"model": "fake", "stream": False, **extra}
            if path == "/v1/completions":
                body.setdefault("prompt", "hi")
            elif "prompt" not in extra:
                body.setdefault("messages", MESSAGES)
            response = await http.post(f"{base}{path}", json=body, headers=AUTH)
            assert response.status_code == 400, (path, extra, response.text)
            assert named in response.text, (path, extra, response.text)


@pytest.mark.parametrize("path", ["/v1/models/fake", "/v1/models/fake:latest"])
async def test_model_by_id(nats_server: NatsServer, path: str) -> None:
    async with fake_stack(nats_server.url) as (base, http):
        found = await http.get(f"{base}{path}", headers=AUTH)
        missing = await http.get(f"{base}/v1/models/nope", headers=AUTH)
    assert found.status_code == 200 and found.json()["id"] == "fake" and found.json()["object"] == "model"
    assert missing.status_code == 404
