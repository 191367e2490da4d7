"""The JSON body `HttpEngine` sends its upstream for one request, in the upstream's own dialect.

Every sampling field the request set is passed on under the upstream's name (Ollama `options`, OpenAI
top-level fields; `top_k`, `min_p`, `repeat_penalty` are the extensions vLLM and llama.cpp's server take,
`min_tokens` vLLM's);
fields left unset are left to the upstream's defaults. Structured output becomes Ollama `format` or OpenAI
`response_format`. What the upstream's API cannot express is refused as the client's error, never dropped.
"""

from __future__ import annotations

from typing import Any, Literal

from gpu_worker.engines.protocol import EngineInputError
from schemas.messages import GenerateRequest, OutputFormat

UpstreamApi = Literal["ollama", "openai"]
_OLLAMA_OPTIONS = ("top_k", "min_p", "repeat_penalty", "repeat_last_n", "presence_penalty", "frequency_penalty")
_OPENAI_EXTRAS = ("top_k", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty")


def upstream_body(api: UpstreamApi, model: str, request: GenerateRequest) -> dict[str, Any]:
    if request.logprobs:
        raise EngineInputError("logprobs are not passed to an upstream model server by Iris - at $.logprobs")
    body: dict[str, Any] = {"model": model, "stream": request.stream}
    if request.prompt is not None:
        body["prompt"] = request.prompt
    else:
        body["messages"] = [{"role": m.role, "content": m.content} for m in request.messages or []]
    if api == "ollama":
        return _ollama(body, request)
    return _openai(body, request)


def _ends(request: GenerateRequest, max_tokens_key: str) -> dict[str, Any]:
    """Where the answer ends and how it is seeded, given: the same in both dialects but the token cap's name."""
    given = {max_tokens_key: request.max_tokens, "stop": list(request.stop) or None, "seed": request.seed}
    return {key: value for key, value in given.items() if value is not None}


def _ollama(body: dict[str, Any], request: GenerateRequest) -> dict[str, Any]:
    if request.logit_bias:
        raise EngineInputError("logit_bias is not supported by an Ollama upstream - at $.logit_bias")
    if request.min_tokens:
        raise EngineInputError("min_tokens is not supported by an Ollama upstream - at $.min_tokens")
    options: dict[str, Any] = {"temperature": request.temperature, "top_p": request.top_p}
    options.update(_ends(request, max_tokens_key="num_predict"), **_set_fields(request, _OLLAMA_OPTIONS))
    body["options"] = options
    if request.prompt is not None:
        body["raw"] = True
    if request.response_format is not None:
        body["format"] = request.response_format.json_schema or "json"
    return body


def _openai(body: dict[str, Any], request: GenerateRequest) -> dict[str, Any]:
    if request.repeat_last_n is not None:
        raise EngineInputError("repeat_last_n is not supported by an OpenAI-compatible upstream - at $.repeat_last_n")
    body.update(temperature=request.temperature, top_p=request.top_p)
    if request.stream:
        body["stream_options"] = {"include_usage": True}
    body.update(_ends(request, max_tokens_key="max_tokens"))
    if request.logit_bias:
        body["logit_bias"] = {str(token): bias for token, bias in request.logit_bias.items()}
    body.update(_set_fields(request, _OPENAI_EXTRAS))
    if request.min_tokens:
        body["min_tokens"] = request.min_tokens
    if request.response_format is not None:
        body["response_format"] = openai_response_format(request.response_format)
    return body


def openai_response_format(output: OutputFormat) -> dict[str, Any]:
    if output.json_schema is None:
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": output.json_schema, "strict": True}}


def _set_fields(request: GenerateRequest, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(request, name) for name in names if getattr(request, name) is not None}
