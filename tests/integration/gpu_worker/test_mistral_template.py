"""The production model's path without a download: a random-weight GGUF with Mistral's architecture
(llama), SentencePiece vocabulary and `[INST] … [/INST]` template, served through Iris's chat path."""

from __future__ import annotations

import pytest
from nats.aio.client import Client as NATS

from gpu_worker.engines.llama.engine import LlamaCppEngine
from gpu_worker.engines.protocol import EngineInputError, StopSignal
from iris.launch.nats_server import NatsServer
from iris.sdk.client import Client
from schemas.messages import ChatMessage, GenerateRequest
from tests.integration.services import broker, worker

pytestmark = pytest.mark.slow  # the real model (or a cluster) in real processes


async def test_chat_is_formatted_by_the_models_template(
    nats_server: NatsServer, nc: NATS, tiny_mistral_model: str
) -> None:
    engine = LlamaCppEngine(tiny_mistral_model, "mistral", slots=2, ctx_per_slot=256, n_threads=1)
    async with broker(nats_server.url), worker(nats_server.url, engine, "w1") as service:
        result = await Client(nc).complete(
            messages=[{"role": "user", "content": "Why is the sky blue?"}],
            model="mistral",
            max_tokens=12,
            temperature=0,
        )
        heartbeat = service.heartbeat()
        prompt_tokens = engine.tokenize(engine.last_prompt)
    assert engine.last_prompt == "<s>[INST] Why is the sky blue? [/INST]"
    assert prompt_tokens.count(1) == 1  # the template's <s> is the only BOS: none added twice
    assert result.usage.prompt_tokens == len(prompt_tokens)
    assert result.usage.completion_tokens == 12 or result.finish_reason == "stop"
    assert heartbeat.slots == 2 and heartbeat.gpu is False
    assert heartbeat.tokens_per_s > 0


async def test_messages_the_template_refuses_are_the_clients_error(tiny_mistral_model: str) -> None:
    engine = LlamaCppEngine(tiny_mistral_model, "mistral", ctx_per_slot=256, n_threads=1)
    await engine.load()
    request = GenerateRequest(messages=[ChatMessage(role="system", content="Be brief.")], max_tokens=4)
    try:
        with pytest.raises(
            EngineInputError, match="chat template refused the messages: Conversation roles must alternate"
        ):
            async for _ in engine.generate(request, StopSignal()):
                pass
    finally:
        await engine.close()
