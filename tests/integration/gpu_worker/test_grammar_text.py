"""The structured-output grammars, run by llama.cpp's own grammar sampler over the real model's tokens:
they take the JSON they should and refuse what is not JSON, such as a raw newline inside a string (a
CI run once answered `{"name": ":\\n    ", ...}` under a schema: llama-cpp-python's converter let
control characters into strings)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from gpu_worker.embedded_model import EMBEDDED_MODEL_NAME
from gpu_worker.engines.llama.engine import LlamaCppEngine
from gpu_worker.engines.llama.grammar import output_grammar
from gpu_worker.engines.llama.sampler import _TOKEN_DATA, _apply, _token_array
from schemas.messages import OutputFormat

pytestmark = pytest.mark.slow  # the real model's vocabulary

NAMED = {
    "type": "object",
    "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 12}, "tags": {"type": "array"}},
    "required": ["name"],
    "additionalProperties": False,
}
FORMATS = {"any JSON": OutputFormat(), "a schema": OutputFormat(json_schema=NAMED)}


@pytest.fixture(scope="module")
def vocab(embedded_model: str) -> Iterator[Any]:
    engine = LlamaCppEngine(embedded_model, EMBEDDED_MODEL_NAME, slots=1, ctx_per_slot=64, n_threads=1)
    asyncio.run(engine.load())
    yield engine._vocab
    asyncio.run(engine.close())


def grammar_takes(vocab: Any, output: OutputFormat, text: str) -> bool:
    """Whether the grammar lets the model write `text` to its end, token by token as llama.cpp splits it."""
    import llama_cpp.llama_cpp as llama

    data = text.encode()
    tokens = (llama.llama_token * (len(data) + 2))()
    n = llama.llama_tokenize(vocab, data, len(data), tokens, len(tokens), False, False)
    grammar = llama.llama_sampler_init_grammar(vocab, output_grammar(output).encode(), b"root")
    eos = llama.llama_vocab_eos(vocab)
    try:
        for token in [*tokens[:n], eos]:
            candidate = np.zeros(1, dtype=_TOKEN_DATA)
            candidate["id"], candidate["logit"] = token, 1.0
            _apply(grammar, _token_array(candidate))
            if not np.isfinite(candidate["logit"][0]):
                return False
            if token != eos:
                llama.llama_sampler_accept(grammar, token)
        return True
    finally:
        llama.llama_sampler_free(grammar)


@pytest.mark.parametrize("output", FORMATS.values(), ids=FORMATS.keys())
def test_json_with_escapes_is_taken(vocab: Any, output: OutputFormat) -> None:
    text = json.dumps({"name": 'a\nb\t"c"', "tags": [1, "x"]})
    assert grammar_takes(vocab, output, text)


@pytest.mark.parametrize("output", FORMATS.values(), ids=FORMATS.keys())
@pytest.mark.parametrize("raw", ["\n", "\t", "\x01", "\x1f"])
def test_raw_control_characters_in_a_string_are_refused(vocab: Any, output: OutputFormat, raw: str) -> None:
    text = '{"name": ":' + raw + '    ", "tags": []}'
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)  # what a client would get: not JSON
    assert not grammar_takes(vocab, output, text)


def test_the_schema_bounds_the_string_by_characters(vocab: Any) -> None:
    schema = OutputFormat(json_schema=NAMED)
    assert grammar_takes(vocab, schema, json.dumps({"name": "é" * 12}, ensure_ascii=False))
    assert not grammar_takes(vocab, schema, json.dumps({"name": "x" * 13}))
    assert not grammar_takes(vocab, schema, json.dumps({"name": ""}))
