"""The real LangChain chat models pointed at Iris: `langchain-openai` `ChatOpenAI` and `langchain-ollama`
`ChatOllama` answer, stream, and return structured output (`with_structured_output`, JSON schema)."""

from __future__ import annotations

import asyncio

from langchain_ollama import ChatOllama
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from gpu_worker.engines.fake import FakeEngine
from iris.launch.nats_server import NatsServer
from tests.integration.gateway_stack import OPEN_KEY, gateway
from tests.integration.services import broker, worker


class Person(BaseModel):
    name: str = Field(max_length=20)
    age: int = Field(ge=0, le=120)


async def test_chat_openai_answers_streams_and_structures(nats_server: NatsServer) -> None:
    url = nats_server.url
    async with broker(url), worker(url, FakeEngine("fake"), "w1"), gateway(url, "fake") as gw:
        llm = ChatOpenAI(base_url=f"{gw.http.url}/v1", api_key=OPEN_KEY, model="fake", max_retries=0)  # type: ignore[union-attr, arg-type]
        answer = await llm.ainvoke("Why is the sky blue?")
        parts = [chunk.content async for chunk in llm.astream("Why is the sky blue?")]
        person = await llm.with_structured_output(Person, method="json_schema").ainvoke("Describe a person.")
    assert isinstance(answer.content, str) and len(answer.content.split()) == 16  # FakeEngine stops by itself
    assert "".join(str(p) for p in parts) == answer.content
    assert isinstance(person, Person)


async def test_chat_ollama_answers_streams_and_structures(nats_server: NatsServer) -> None:
    url = nats_server.url
    async with broker(url), worker(url, FakeEngine("fake"), "w1"), gateway(url, "fake") as gw:
        # Validation lists the models with a synchronous client: off the loop that serves the gateway.
        llm = await asyncio.to_thread(ChatOllama, base_url=gw.http.url, model="fake", validate_model_on_init=True)  # type: ignore[union-attr]
        answer = await llm.ainvoke("Why is the sky blue?")
        parts = [chunk.content async for chunk in llm.astream("Why is the sky blue?")]
        person = await llm.with_structured_output(Person).ainvoke("Describe a person.")
    assert isinstance(answer.content, str) and answer.content.strip()
    assert "".join(str(p) for p in parts) == answer.content
    assert isinstance(person, Person)
