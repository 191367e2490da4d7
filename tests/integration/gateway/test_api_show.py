"""Ollama's `/api/show` (which `ollama.show()` and LangChain's ChatOllama call): the template, parameters
and model info of the GGUF the worker loaded, read from the card it published in `IRIS_MODELS`."""

from __future__ import annotations

import httpx
import ollama
import pytest

from gpu_worker.engines.fake import FakeEngine
from gpu_worker.engines.llama.engine import LlamaCppEngine
from iris.bench.random_gguf import MISTRAL_CHAT_TEMPLATE
from iris.launch.nats_server import NatsServer
from tests.conftest import Processes
from tests.integration.gateway_stack import OPEN_KEY, gateway
from tests.integration.services import broker, worker

pytestmark = pytest.mark.slow  # the real model (or a cluster) in real processes

AUTH = {"Authorization": f"Bearer {OPEN_KEY}"}


def parameters(show: ollama.ShowResponse) -> list[tuple[str, str]]:
    lines = [line.split(None, 1) for line in (show.parameters or "").splitlines()]
    return [(key, value.strip()) for key, value in lines]


async def test_show_describes_the_real_gguf(nats_server: NatsServer, processes: Processes) -> None:
    url = nats_server.url
    processes.start("worker", "gpu_worker", "--nats", url, "--worker-id", "real", "--ctx-per-slot", "1024")
    async with broker(url), gateway(url, "gemma3-270m", ready_timeout_s=120) as gw:
        show = await ollama.AsyncClient(host=gw.http.url, headers=AUTH).show("gemma3:270m")  # type: ignore[union-attr]
    info = show.modelinfo or {}
    assert info["general.architecture"] == "gemma3" and info["general.name"] == "Gemma 3 270m"
    assert info["gemma3.context_length"] == 32768  # what the model was trained for, as Ollama shows it
    assert info["gemma3.block_count"] == 18 and info["general.parameter_count"] == 268_098_176
    assert not any(key.startswith("tokenizer.ggml.tokens") for key in info)  # no vocabulary arrays
    assert show.details is not None
    assert (show.details.format, show.details.family, show.details.families) == ("gguf", "gemma3", ["gemma3"])
    assert (show.details.parameter_size, show.details.quantization_level) == ("268.10M", "Q4_K_M")
    assert show.template == ""  # the embedded GGUF has no chat template: Iris's fallback turns apply
    assert ("num_ctx", "1024") in parameters(show)  # the context each request gets on this worker
    assert ("stop", '"\\nUser:"') in parameters(show)
    assert show.capabilities == ["completion"] and show.modified_at is not None
    assert "FROM gemma3-270m" in (show.modelfile or "") and "PARAMETER num_ctx 1024" in (show.modelfile or "")


async def test_show_gives_the_models_own_template(nats_server: NatsServer, tiny_mistral_model: str) -> None:
    url = nats_server.url
    engine = LlamaCppEngine(tiny_mistral_model, "mistral", slots=2, ctx_per_slot=256, n_threads=1)
    async with broker(url), worker(url, engine, "w1"), gateway(url, "mistral") as gw:
        show = await ollama.AsyncClient(host=gw.http.url, headers=AUTH).show("mistral")  # type: ignore[union-attr]
    assert show.template == MISTRAL_CHAT_TEMPLATE
    assert f'TEMPLATE """{MISTRAL_CHAT_TEMPLATE}"""' in (show.modelfile or "")
    assert ("num_ctx", "256") in parameters(show) and ("stop", '"</s>"') in parameters(show)
    assert (show.modelinfo or {})["general.architecture"] == "llama"
    assert "tokenizer.chat_template" not in (show.modelinfo or {})  # it is `template`
    assert show.details is not None and show.details.family == "llama"


async def test_show_refuses_unknown_models_and_fields(nats_server: NatsServer) -> None:
    url = nats_server.url
    async with broker(url), worker(url, FakeEngine("fake"), "w1"), gateway(url, "fake") as gw:
        base = gw.http.url  # type: ignore[union-attr]
        show = await ollama.AsyncClient(host=base, headers=AUTH).show("fake:latest")
        assert show.details is not None and show.details.family == "fake"
        assert (show.modelinfo or {})["fake.context_length"] == 2048
        with pytest.raises(ollama.ResponseError) as missing:
            await ollama.AsyncClient(host=base, headers=AUTH).show("nope")
        assert missing.value.status_code == 404 and "'nope' not found" in missing.value.error
        async with httpx.AsyncClient(base_url=base, headers=AUTH) as http:
            legacy = await http.post("/api/show", json={"name": "fake"})
            assert legacy.status_code == 200 and legacy.json()["model_info"]["general.architecture"] == "fake"
            unknown = await http.post("/api/show", json={"model": "fake", "modelfile": "FROM x"})
            assert unknown.status_code == 400 and "modelfile" in unknown.json()["error"]
            nameless = await http.post("/api/show", json={})
            assert nameless.status_code == 400 and "$.model" in nameless.json()["error"]
            wrong_type = await http.post("/api/show", json={"model": 3})
            assert wrong_type.status_code == 400 and "$.model" in wrong_type.json()["error"]
