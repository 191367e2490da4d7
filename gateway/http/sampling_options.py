"""Sampling options, structured output and logprobs of the Ollama and OpenAI dialects, as `GenerateRequest`
fields: everything a client may ask for is either passed to the engine or refused with a 400 naming the
field, never dropped.

Honoured: `num_predict` / `max_tokens` (none = until a stop or the slot's context is full), temperature,
top_p, top_k, min_p, seed, stop, repeat/presence/frequency penalties (`repeat_last_n` on Ollama),
OpenAI `logit_bias` (token ids), logprobs with alternatives, and structured output (Ollama `format`:
`"json"` or a JSON schema; OpenAI `response_format`: `json_object` or `json_schema`). Refused: what Iris
fixes per worker at start (Ollama's `num_ctx`, `num_gpu`, `num_thread`, ...) and sampler families llama.cpp
runs that Iris does not expose (mirostat, typical_p, tfs_z).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from schemas.errors import InvalidRequest
from schemas.messages import MAX_STOP_SEQUENCES, MAX_TOKENS_LIMIT, MAX_TOP_LOGPROBS, OutputFormat

Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]
StopList = Annotated[list[Annotated[str, Meta(min_length=1, max_length=64)]], Meta(max_length=MAX_STOP_SEQUENCES)]
_WORKER_SETTING = "is fixed per worker at start in Iris (--ctx-per-slot, --n-gpu-layers, --threads)"
_NOT_EXPOSED = "is not supported by Iris (use temperature, top_k, top_p, min_p)"
_REFUSED_OLLAMA_OPTIONS = {
    "num_ctx": _WORKER_SETTING,
    "num_batch": _WORKER_SETTING,
    "num_gpu": _WORKER_SETTING,
    "main_gpu": _WORKER_SETTING,
    "num_thread": _WORKER_SETTING,
    "numa": _WORKER_SETTING,
    "low_vram": _WORKER_SETTING,
    "use_mmap": _WORKER_SETTING,
    "use_mlock": _WORKER_SETTING,
    "vocab_only": _WORKER_SETTING,
    "logits_all": _WORKER_SETTING,
    "embedding_only": _WORKER_SETTING,
    "f16_kv": _WORKER_SETTING,
    "num_keep": "is not supported by Iris (a context never shifts: an answer ends when the slot is full)",
    "mirostat": _NOT_EXPOSED,
    "mirostat_tau": _NOT_EXPOSED,
    "mirostat_eta": _NOT_EXPOSED,
    "typical_p": _NOT_EXPOSED,
    "tfs_z": _NOT_EXPOSED,
    "penalize_newline": _NOT_EXPOSED,
}


class OllamaOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    num_predict: Annotated[int, Meta(ge=-2, le=MAX_TOKENS_LIMIT)] | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Meta(ge=0, le=1000)] | None = None
    min_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    seed: Annotated[int, Meta(ge=-1, le=2**31 - 1)] | None = None
    stop: StopList = []
    repeat_penalty: Annotated[float, Meta(gt=0.0, le=10.0)] | None = None
    repeat_last_n: Annotated[int, Meta(ge=-1, le=MAX_TOKENS_LIMIT)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    # Known to Ollama, refused by Iris when set (see `_REFUSED_OLLAMA_OPTIONS`).
    num_ctx: Any = None
    num_batch: Any = None
    num_gpu: Any = None
    main_gpu: Any = None
    num_thread: Any = None
    numa: Any = None
    low_vram: Any = None
    use_mmap: Any = None
    use_mlock: Any = None
    vocab_only: Any = None
    logits_all: Any = None
    embedding_only: Any = None
    f16_kv: Any = None
    num_keep: Any = None
    mirostat: Any = None
    mirostat_tau: Any = None
    mirostat_eta: Any = None
    typical_p: Any = None
    tfs_z: Any = None
    penalize_newline: Any = None


_OLLAMA_PASSED = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "repeat_last_n")
_PENALTIES = ("presence_penalty", "frequency_penalty")


def ollama_fields(options: OllamaOptions | None, default_max_tokens: int | None) -> dict[str, Any]:
    """`GenerateRequest` fields from Ollama `options`."""
    o = options or OllamaOptions()
    for name, reason in _REFUSED_OLLAMA_OPTIONS.items():
        value = getattr(o, name)
        if value is not None and not (name == "mirostat" and value == 0):
            raise InvalidRequest(f"options.{name} {reason} - at $.options.{name}")
    if o.num_predict == 0:
        raise InvalidRequest("options.num_predict must be -1, -2 or at least 1 - at $.options.num_predict")
    fields: dict[str, Any] = {"stop": o.stop}
    fields["max_tokens"] = default_max_tokens if o.num_predict in (None, -1, -2) else o.num_predict
    fields.update({name: getattr(o, name) for name in (*_OLLAMA_PASSED, *_PENALTIES) if getattr(o, name) is not None})
    if o.seed is not None and o.seed >= 0:
        fields["seed"] = o.seed
    return fields


def ollama_format(value: Any) -> OutputFormat | None:
    """Ollama `format`: "" or absent (free text), "json", or a JSON schema object."""
    if value is None or value == "":
        return None
    if value == "json":
        return OutputFormat()
    if isinstance(value, dict):
        return OutputFormat(json_schema=value)
    raise InvalidRequest('format must be "json" or a JSON schema object - at $.format')


def ollama_logprobs(logprobs: bool | None, top_logprobs: int | None) -> dict[str, Any]:
    return _logprobs(bool(logprobs), top_logprobs or 0, "$.top_logprobs")


class JsonSchemaFormat(msgspec.Struct, frozen=True):
    name: Annotated[str, Meta(max_length=64)] = "output"
    schema: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    type: str = "text"
    json_schema: JsonSchemaFormat | None = None


def openai_format(response_format: ResponseFormat | None) -> OutputFormat | None:
    """`text` (free), `json_object` (any JSON object), `json_schema` (JSON valid for the schema; the
    grammar enforces it whether or not `strict` is set)."""
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return OutputFormat()
    if response_format.type == "json_schema":
        if response_format.json_schema is None or response_format.json_schema.schema is None:
            raise InvalidRequest("response_format json_schema needs a schema - at $.response_format.json_schema.schema")
        return OutputFormat(json_schema=response_format.json_schema.schema)
    raise InvalidRequest(
        f"response_format type {response_format.type!r} is not supported (text, json_object, json_schema)"
        " - at $.response_format.type"
    )


def openai_logit_bias(bias: dict[str, float] | None) -> dict[int, float] | None:
    """OpenAI `logit_bias` keys are token ids written as strings."""
    if not bias:
        return None
    try:
        return {int(token): value for token, value in bias.items()}
    except ValueError:
        raise InvalidRequest("logit_bias keys must be token ids (integers as strings) - at $.logit_bias") from None


def openai_logprobs(logprobs: bool | int | None, top_logprobs: int | None) -> dict[str, Any]:
    """Chat: `logprobs: true` + `top_logprobs: N`; legacy completions: `logprobs: N` (alternatives)."""
    if isinstance(logprobs, bool) or logprobs is None:
        return _logprobs(bool(logprobs), top_logprobs or 0, "$.top_logprobs")
    return _logprobs(True, logprobs, "$.logprobs")


def _logprobs(wanted: bool, top: int, path: str) -> dict[str, Any]:
    if not 0 <= top <= MAX_TOP_LOGPROBS:
        raise InvalidRequest(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}] - at {path}")
    if top and not wanted:
        raise InvalidRequest("top_logprobs needs logprobs: true - at $.logprobs")
    return {"logprobs": True, "top_logprobs": top} if wanted else {}
