"""Structured output on the real embedded model through the gateway: Ollama `format` (a JSON schema, and
"json") and OpenAI `response_format` (`json_schema`, `json_object`) answer JSON that parses and validates,
for every one of 20 prompts, because a llama.cpp grammar constrains the sampling."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import jsonschema
import ollama
import openai
import pytest

from gpu_worker.embedded_model import EMBEDDED_MODEL_NAME
from gpu_worker.engines.fake import FakeEngine
from gpu_worker.engines.llama.engine import LlamaCppEngine
from iris.launch.nats_server import NatsServer
from tests.integration.gateway_stack import OPEN_KEY, gateway
from tests.integration.services import broker, worker

pytestmark = pytest.mark.slow  # the real model (or a cluster) in real processes

MODEL = EMBEDDED_MODEL_NAME
FREE_JSON = "Reply with an empty JSON object."  # free JSON: greedy on this prompt closes its strings at once
WAIT = {"Authorization": f"Bearer {OPEN_KEY}", "X-Iris-Deadline": "900"}  # 20 answers queue behind 4 slots
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "pet": {"enum": ["cat", "dog", "none"]},
        "student": {"type": "boolean"},
    },
    "required": ["name", "age", "pet", "student"],
    "additionalProperties": False,
}
PROMPTS = [
    f"Describe person number {i} ({who}) as JSON."
    for i, who in enumerate(
        [
            "a baker",
            "a pilot",
            "a child",
            "a nurse",
            "a painter",
            "a farmer",
            "a coder",
            "a singer",
            "a doctor",
            "a poet",
        ]
        * 2
    )
]


async def _ollama_answers(url: str) -> list[str]:
    client = ollama.AsyncClient(host=url, headers=WAIT, timeout=900)

    async def one(prompt: str) -> str:
        answer = await client.generate(model=MODEL, prompt=prompt, format=PERSON)
        return answer.response

    return list(await asyncio.gather(*(one(p) for p in PROMPTS)))


async def _openai_answers(url: str) -> list[str]:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=OPEN_KEY, max_retries=0, timeout=900)
    response_format: Any = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}

    async def one(prompt: str) -> str:
        answer = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": prompt}],
            response_format=response_format,
            extra_headers={"X-Iris-Deadline": "900"},
        )
        return answer.choices[0].message.content or ""

    return list(await asyncio.gather(*(one(p) for p in PROMPTS)))


def _valid(text: str) -> bool:
    try:
        jsonschema.validate(json.loads(text), PERSON)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


@pytest.mark.timeout(900)
async def test_json_schema_answers_validate_20_of_20(nats_server: NatsServer, embedded_model: str) -> None:
    url = nats_server.url
    engine = LlamaCppEngine(embedded_model, MODEL, slots=8, ctx_per_slot=512, n_threads=2)
    async with broker(url, max_concurrency=8), worker(url, engine, "w1"), gateway(url, MODEL) as gw:
        base = gw.http.url  # type: ignore[union-attr]
        from_ollama, from_openai = await asyncio.gather(_ollama_answers(base), _openai_answers(base))
        client = ollama.AsyncClient(host=base, headers={"Authorization": f"Bearer {OPEN_KEY}"}, timeout=300)
        # Free JSON has unbounded strings: greedy keeps a tiny model from rambling inside one to the slot's end.
        any_json = await client.chat(
            model=MODEL, messages=[{"role": "user", "content": FREE_JSON}], format="json", options={"temperature": 0}
        )
        oai = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=OPEN_KEY, max_retries=0, timeout=300)
        json_object = await oai.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": FREE_JSON}],
            response_format={"type": "json_object"},
            temperature=0,
        )
    assert [t for t in from_ollama if not _valid(t)] == []
    assert [t for t in from_openai if not _valid(t)] == []
    assert isinstance(json.loads(any_json.message.content or ""), dict)
    assert isinstance(json.loads(json_object.choices[0].message.content or ""), dict)


async def test_a_schema_the_grammar_cannot_take_is_a_400(nats_server: NatsServer, embedded_model: str) -> None:
    url = nats_server.url
    engine = LlamaCppEngine(embedded_model, MODEL, n_threads=2)
    async with broker(url), worker(url, engine, "w1"), gateway(url, MODEL) as gw:
        client = ollama.AsyncClient(host=gw.http.url, headers={"Authorization": f"Bearer {OPEN_KEY}"})  # type: ignore[union-attr]
        with pytest.raises(ollama.ResponseError) as raised:
            await client.generate(model=MODEL, prompt="hi", format={"type": "object", "$ref": "https://x.test/s"})
    assert raised.value.status_code == 400 and "json_schema" in raised.value.error


async def test_fake_engine_answers_schema_valid_json(nats_server: NatsServer) -> None:
    url = nats_server.url
    async with broker(url), worker(url, FakeEngine("fake"), "w1"), gateway(url, "fake") as gw:
        client = ollama.AsyncClient(host=gw.http.url, headers={"Authorization": f"Bearer {OPEN_KEY}"})  # type: ignore[union-attr]
        answer = await client.generate(model="fake", prompt="a person", format=PERSON)
        free = await client.generate(model="fake", prompt="a person", format="json")
    jsonschema.validate(json.loads(answer.response), PERSON)
    assert isinstance(json.loads(free.response), dict)
