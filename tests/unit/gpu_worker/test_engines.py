"""The worker builds the engine its config names, and refuses contradictory options naming them; an
upstream gets the fields its API can express."""

from __future__ import annotations

import pytest

from gpu_worker.__main__ import make_engine
from gpu_worker.config import WorkerConfig
from gpu_worker.engines.http import HttpEngine
from gpu_worker.engines.llama.engine import LlamaCppEngine
from gpu_worker.engines.llama.offload import Offload
from gpu_worker.engines.protocol import EngineInputError
from gpu_worker.engines.upstream_body import upstream_body
from runtime.config_loading import ConfigError, load_config
from schemas.messages import GenerateRequest


def test_llama_engine_gets_the_gpu_options() -> None:
    config = WorkerConfig(model="/models/mistral-7b.Q4_K_M.gguf", slots=4, n_gpu_layers=-1, tensor_split="3,1")
    engine = make_engine(config)
    assert isinstance(engine, LlamaCppEngine)
    assert engine.model_name == "mistral-7b_q4_k_m" and engine.slots == 4
    assert engine.offload == Offload(n_gpu_layers=-1, main_gpu=0, tensor_split=(3.0, 1.0), flash_attn="auto")


def test_http_engine_from_flags() -> None:
    config = WorkerConfig(engine="http", upstream="http://gpu-box:11434", upstream_model="mistral:latest", slots=2)
    engine = make_engine(config)
    assert isinstance(engine, HttpEngine)
    assert engine.model_name == "mistral" and engine.slots == 2 and engine.api == "ollama"


@pytest.mark.parametrize(
    ("options", "named"),
    [({"upstream_model": "mistral"}, "--upstream ''"), ({"upstream": "http://gpu-box:11434"}, "--upstream-model")],
)
def test_http_engine_needs_upstream_and_model(options: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        make_engine(WorkerConfig(engine="http", **options))  # type: ignore[arg-type]


def test_bad_tensor_split_names_the_key() -> None:
    with pytest.raises(ConfigError, match="tensor_split"):
        load_config(WorkerConfig, "worker", flags={"tensor_split": "3;1"}, env={})


def test_min_tokens_goes_to_an_openai_upstream_and_is_refused_by_ollama() -> None:
    request = GenerateRequest(prompt="hi", max_tokens=8, min_tokens=8)
    assert upstream_body("openai", "m", request)["min_tokens"] == 8  # vLLM's extension
    assert "min_tokens" not in upstream_body("openai", "m", GenerateRequest(prompt="hi"))
    with pytest.raises(EngineInputError, match=r"min_tokens .* Ollama .* \$\.min_tokens"):
        upstream_body("ollama", "m", request)
