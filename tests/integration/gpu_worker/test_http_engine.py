"""`HttpEngine` against a real local HTTP server speaking Ollama's (and OpenAI's) streaming API."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client as NATS

from gpu_worker.engines.fake import FakeEngine
from gpu_worker.engines.http import HttpEngine, UpstreamError
from gpu_worker.engines.protocol import EngineInputError, Finished, Piece, StopSignal
from iris.launch.nats_server import NatsServer
from iris.sdk.client import Client
from schemas.messages import ChatMessage, GenerateRequest
from tests.integration.fake_upstream import FakeUpstream, serve
from tests.integration.gateway_stack import gateway
from tests.integration.services import broker, eventually, worker


async def run(engine: HttpEngine, request: GenerateRequest, stop: StopSignal | None = None) -> tuple[str, Finished]:
    text, finished = [], None
    async for event in engine.generate(request, stop or StopSignal()):
        if isinstance(event, Piece):
            text.append(event.text)
        else:
            finished = event
    assert finished is not None
    return "".join(text), finished


async def test_ollama_prompt_streams_with_options_passed_on() -> None:
    with serve(FakeUpstream(words=5)) as upstream:
        engine = HttpEngine(upstream.url, "ollama", "mistral", "mistral")
        await engine.load()  # `mistral` is Ollama's `mistral:latest`
        request = GenerateRequest(
            prompt="[INST] hi [/INST]", max_tokens=5, temperature=0.2, top_p=0.9, stop=["</s>"], seed=3
        )
        text, finished = await run(engine, request)
        await engine.close()
    assert text == "w0 w1 w2 w3 w4 "
    assert finished == Finished("length", prompt_tokens=7, completion_tokens=5)
    path, body = upstream.requests[0]
    assert path == "/api/generate" and body["prompt"] == "[INST] hi [/INST]" and body["raw"] is True
    assert body["options"] == {"temperature": 0.2, "top_p": 0.9, "num_predict": 5, "stop": ["</s>"], "seed": 3}


async def test_ollama_chat_forwards_messages() -> None:
    with serve(FakeUpstream(words=3)) as upstream:
        engine = HttpEngine(upstream.url, "ollama", "mistral:latest", "mistral")
        await engine.load()
        request = GenerateRequest(messages=[ChatMessage(role="user", content="Why is the sky blue?")], max_tokens=8)
        text, finished = await run(engine, request)
        await engine.close()
    assert text == "w0 w1 w2 " and finished == Finished("stop", prompt_tokens=9, completion_tokens=3)
    path, body = upstream.requests[0]
    assert path == "/api/chat" and body["messages"] == [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.mark.parametrize("chat", [False, True])
async def test_openai_compatible_stream_and_usage(chat: bool) -> None:
    with serve(FakeUpstream(model="mistral-7b", words=4)) as upstream:
        engine = HttpEngine(upstream.url, "openai", "mistral-7b", "mistral")
        await engine.load()
        if chat:
            request = GenerateRequest(messages=[ChatMessage(role="user", content="hi")], max_tokens=4)
        else:
            request = GenerateRequest(prompt="hi", max_tokens=4, seed=1)
        text, finished = await run(engine, request)
        await engine.close()
    assert text == "w0 w1 w2 w3 " and finished == Finished("length", prompt_tokens=11, completion_tokens=4)
    path, body = upstream.requests[0]
    assert path == ("/v1/chat/completions" if chat else "/v1/completions")
    assert body["max_tokens"] == 4 and body["stream"] is True


async def test_cancel_closes_the_upstream_stream() -> None:
    with serve(FakeUpstream(words=2000, delay_s=0.005)) as upstream:
        engine = HttpEngine(upstream.url, "ollama", "mistral", "mistral")
        await engine.load()
        stop = StopSignal()
        pieces = 0
        async for event in engine.generate(GenerateRequest(prompt="go", max_tokens=2000), stop):
            if isinstance(event, Piece):
                pieces += 1
                if pieces == 3:
                    stop.stop("cancelled")
            else:
                assert event.finish_reason == "cancelled" and event.completion_tokens == pieces == 3

        async def hung_up() -> bool:
            return upstream.hung_up.is_set()

        await eventually(hung_up, 10, "the upstream to see the client hang up")
        await engine.close()


async def test_unknown_model_and_unreachable_upstream_fail_at_load() -> None:
    with serve(FakeUpstream()) as upstream:
        with pytest.raises(UpstreamError, match="does not serve model 'llama3'"):
            await HttpEngine(upstream.url, "ollama", "llama3", "llama3").load()
        url = upstream.url
    with pytest.raises(UpstreamError, match="did not answer"):
        await HttpEngine(url, "ollama", "mistral", "mistral").load()


async def test_upstream_errors_are_typed() -> None:
    with serve(FakeUpstream()) as upstream:
        engine = HttpEngine(upstream.url, "ollama", "mistral", "mistral")
        await engine.load()
        upstream.status = 400
        with pytest.raises(EngineInputError, match="upstream answered 400"):
            await run(engine, GenerateRequest(prompt="x"))
        upstream.status = 500
        with pytest.raises(UpstreamError, match="upstream answered 500"):
            await run(engine, GenerateRequest(prompt="x"))
        await engine.close()


async def test_iris_fronts_an_ollama_server(nats_server: NatsServer, nc: NATS) -> None:
    with serve(FakeUpstream(words=6, delay_s=0.001)) as upstream:
        engine = HttpEngine(upstream.url, "ollama", "mistral", "mistral", slots=2)
        async with broker(nats_server.url), worker(nats_server.url, engine, "w1"):
            client = Client(nc)
            results = await asyncio.gather(*(client.complete(f"q{i}", model="mistral", max_tokens=6) for i in range(3)))
    assert [r.text for r in results] == ["w0 w1 w2 w3 w4 w5 "] * 3
    assert all(r.usage.completion_tokens == 6 and r.usage.prompt_tokens == 7 for r in results)
    assert sorted(body["prompt"] for _, body in upstream.requests) == ["q0", "q1", "q2"]


@pytest.mark.parametrize("api", ["ollama", "openai"])
async def test_iris_fronts_iris_through_its_own_gateway(nats_server: NatsServer, nc: NATS, api: str) -> None:
    """A worker whose engine is Iris's own HTTP gateway (serving model `fake`) serves model `front`: the
    answer crosses the broker twice and comes back word for word."""
    url = nats_server.url
    async with broker(url), worker(url, FakeEngine("fake"), "inner"), gateway(url, "fake") as gw:
        front = HttpEngine(gw.http.url, api, "fake", "front", slots=2)  # type: ignore[union-attr, arg-type]
        async with worker(url, front, "outer"):
            client = Client(nc)
            question = [{"role": "user", "content": "Why is the sky blue?"}]
            through_front = await client.complete(messages=question, model="front", max_tokens=6, temperature=0)
            direct = await client.complete(messages=question, model="fake", max_tokens=6, temperature=0)
    assert through_front.text == direct.text and through_front.usage.completion_tokens == 6
    assert through_front.worker == "outer" and direct.worker == "inner"


@pytest.mark.parametrize("stream", [True, False])
async def test_2000_requests_reuse_one_connection_per_slot(stream: bool) -> None:
    """Each body is read to its end (past `data: [DONE]`) and the pool holds a connection per slot, so
    2,000 streamed requests from 4 slots open at most 4 upstream connections; a client that does not stream
    gets a whole (non-streamed) upstream answer, on the same pooled connections."""
    slots = 4
    with serve(FakeUpstream(model="mistral-7b", words=3)) as upstream:
        engine = HttpEngine(upstream.url, "openai", "mistral-7b", "mistral", slots=slots)
        await engine.load()
        upstream.connections = 0  # the model listing at load is not counted
        gate = asyncio.Semaphore(slots)  # as the worker's slots do

        async def one(i: int) -> str:
            async with gate:
                return (await run(engine, GenerateRequest(prompt=f"q{i}", max_tokens=3, stream=stream)))[0]

        texts = await asyncio.gather(*(one(i) for i in range(2000 if stream else 200)))
        await engine.close()
    assert set(texts) == {"w0 w1 w2 "}
    assert 1 <= upstream.connections <= slots
    assert {body["stream"] for _, body in upstream.requests[1:]} == {stream}
