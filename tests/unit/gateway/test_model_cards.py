"""Model cards: GGUF metadata typed back from llama.cpp's strings and bounded; sizes as Ollama writes them."""

from __future__ import annotations

from gateway.http.show import parameter_size
from schemas.model_cards import MAX_METADATA_KEYS, MAX_METADATA_VALUE_CHARS, typed_metadata


def test_metadata_is_typed_and_bounded() -> None:
    raw = {
        "general.architecture": "gemma3",
        "gemma3.context_length": "32768",
        "gemma3.rope.freq_base": "1000000.000000",
        "tokenizer.ggml.add_bos_token": "true",
        "tokenizer.ggml.tokens": "[<pad>, <eos>, <bos>]",
        "general.description": "x" * (MAX_METADATA_VALUE_CHARS + 1),
        "general.name": "nan",
    }
    assert typed_metadata(raw) == {
        "general.architecture": "gemma3",
        "gemma3.context_length": 32768,
        "gemma3.rope.freq_base": 1e6,
        "tokenizer.ggml.add_bos_token": True,
        "general.name": "nan",
    }
    assert len(typed_metadata({f"k{i}": "1" for i in range(MAX_METADATA_KEYS + 10)})) == MAX_METADATA_KEYS


def test_parameter_sizes_read_as_ollamas() -> None:
    assert [parameter_size(n) for n in (268_098_176, 7_000_000_000, 7_241_732_096, 125_000, 0)] == [
        "268.10M",
        "7B",
        "7.2B",
        "125K",
        "",
    ]
