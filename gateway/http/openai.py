"""OpenAI's HTTP API on Iris: `/v1/chat/completions`, `/v1/completions` (SSE ending in `data: [DONE]`, or
one JSON body with `usage`), `/v1/models`, `/v1/models/{id}`, and errors in OpenAI's
`{"error": {message, type, code}}` shape.

Only what Iris honours is accepted (`sampling_options`): one choice (`n: 1`), text content, sampling knobs
including penalties, `logit_bias` and the vLLM extensions `top_k`/`min_p`/`repeat_penalty`, logprobs,
`response_format` (`json_object`, `json_schema`); tools, audio, `store` and unknown fields are a 400
naming the field. Chat without `max_tokens` generates until a stop or the slot's context is full;
completions default to OpenAI's 16 tokens. `user` becomes the fairness key under the caller's API key.
Iris's `deadline` and `max_inflight` cut-offs are `finish_reason: "length"` (an answer cut short) with
`iris_finish_reason` naming the cut-off. Streams show a waiting request's queue position (`openai_stream`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.http.answer import HttpContext, endpoint, respond
from gateway.http.idempotency import idempotency_key
from gateway.http.io import ApiFamily, json_response, read_json
from gateway.http.openai_stream import SseFormat
from gateway.http.sampling_options import (
    Penalty,
    ResponseFormat,
    openai_format,
    openai_logit_bias,
    openai_logprobs,
)
from schemas.errors import InvalidRequest, ModelNotFound
from schemas.messages import MAX_STOP_SEQUENCES, MAX_TOKENS_LIMIT, ChatMessage, GenerateRequest

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's documented default for /v1/completions
_json = msgspec.json.Encoder()
MaxTokens = Annotated[int, Meta(ge=1, le=MAX_TOKENS_LIMIT)]


class TextPart(msgspec.Struct, frozen=True):
    type: str
    text: str = ""


class OpenAIMessage(msgspec.Struct, frozen=True):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None


class StreamOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    include_usage: bool = False


class _OpenAICall(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    model: str = ""
    max_tokens: MaxTokens | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] | None = None
    n: Annotated[int, Meta(ge=1, le=1)] = 1
    stop: Annotated[str, Meta(min_length=1, max_length=64)] | list[str] | None = None
    seed: Annotated[int, Meta(ge=0, le=2**31 - 1)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Annotated[str, Meta(max_length=256)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: Annotated[dict[str, Annotated[float, Meta(ge=-100, le=100)]], Meta(max_length=1024)] | None = None
    # Extensions vLLM and llama.cpp's server take too (`min_tokens`: vLLM's).
    top_k: Annotated[int, Meta(ge=0, le=1000)] | None = None
    min_tokens: Annotated[int, Meta(ge=0, le=MAX_TOKENS_LIMIT)] | None = None
    min_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    repeat_penalty: Annotated[float, Meta(gt=0.0, le=10.0)] | None = None
    # OpenAI platform fields: accepted only with values that ask for nothing Iris does not do.
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None


class ChatCompletionRequest(_OpenAICall, frozen=True):
    messages: list[OpenAIMessage] = []
    max_completion_tokens: MaxTokens | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    modalities: list[str] | None = None
    audio: Any = None
    prediction: Any = None
    reasoning_effort: str | None = None
    web_search_options: Any = None


class CompletionRequest(_OpenAICall, frozen=True):
    prompt: str | list[str] = ""
    echo: bool = False
    suffix: str | None = None
    logprobs: Annotated[int, Meta(ge=0, le=5)] | None = None
    best_of: Annotated[int, Meta(ge=1, le=1)] | None = None


_chat_decoder = msgspec.json.Decoder(ChatCompletionRequest)
_completion_decoder = msgspec.json.Decoder(CompletionRequest)


def _request(**fields: Any) -> GenerateRequest:
    """The request the fields make; fields that contradict each other (`min_tokens` past `max_tokens`) are
    the client's error."""
    try:
        return GenerateRequest(**fields)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc


def _sampling(call: _OpenAICall, max_tokens: int | None) -> dict[str, Any]:
    if not call.model:
        raise InvalidRequest("model is required - at $.model")
    _refuse_platform_fields(call)
    stop = [call.stop] if isinstance(call.stop, str) else (call.stop or [])
    if len(stop) > MAX_STOP_SEQUENCES or any(not 1 <= len(s) <= 64 for s in stop):
        raise InvalidRequest(f"stop takes at most {MAX_STOP_SEQUENCES} strings of 1-64 characters - at $.stop")
    fields: dict[str, Any] = {"max_tokens": max_tokens, "stop": stop, "stream": call.stream}
    for name in _PASSED:
        value = getattr(call, name)
        if value is not None:
            fields[name] = value
    fields["logit_bias"] = openai_logit_bias(call.logit_bias)
    fields.update(openai_logprobs(getattr(call, "logprobs", None), getattr(call, "top_logprobs", None)))
    return fields


_PASSED = (
    *("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty"),
    *("top_k", "min_p", "repeat_penalty", "min_tokens"),  # the extensions
)


def _refuse_platform_fields(call: _OpenAICall) -> None:
    if call.store:
        raise InvalidRequest("store (keeping completions on the server) is not supported by Iris - at $.store")
    if call.metadata:
        raise InvalidRequest("metadata is only used with store, which Iris does not support - at $.metadata")
    if call.service_tier not in (None, "auto", "default"):
        raise InvalidRequest("service_tier is not supported by Iris (auto or default) - at $.service_tier")


def _chat_messages(call: ChatCompletionRequest) -> list[ChatMessage]:
    if not call.messages:
        raise InvalidRequest("messages must hold at least one message - at $.messages")
    _refuse_chat_fields(call)
    turns = []
    for i, message in enumerate(call.messages):
        content = message.content or ""
        if isinstance(content, list):
            for j, part in enumerate(content):
                if part.type != "text":
                    raise InvalidRequest(f"only text content parts are supported - at $.messages[{i}].content[{j}]")
            content = "".join(part.text for part in content)
        turns.append(ChatMessage("system" if message.role == "developer" else message.role, content))
    return turns


def _refuse_chat_fields(call: ChatCompletionRequest) -> None:
    if call.tools or call.functions:
        raise InvalidRequest("tools (function calling) are not supported by Iris - at $.tools")
    if call.tool_choice not in (None, "none") or call.function_call not in (None, "none"):
        raise InvalidRequest("tool_choice needs tools, which Iris does not support - at $.tool_choice")
    if call.modalities not in (None, ["text"]) or call.audio is not None:
        raise InvalidRequest("only text output is supported by Iris - at $.modalities")
    for name in ("prediction", "reasoning_effort", "web_search_options"):
        if getattr(call, name) is not None:
            raise InvalidRequest(f"{name} is not supported by Iris - at $.{name}")


def _completion_prompt(call: CompletionRequest) -> str:
    if call.echo or call.suffix:
        raise InvalidRequest("echo and suffix are not supported by Iris - at $.echo / $.suffix")
    if isinstance(call.prompt, str):
        return call.prompt
    if len(call.prompt) != 1:
        raise InvalidRequest("send one prompt per request (a list must hold exactly one string) - at $.prompt")
    return call.prompt[0]


def openai_routes(ctx: HttpContext) -> list[Route]:
    family = ApiFamily.OPENAI
    max_bytes = ctx.config.max_body_bytes

    @endpoint(ctx, family, "/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        call = await read_json(request, _chat_decoder, max_bytes)
        max_tokens = call.max_completion_tokens or call.max_tokens or ctx.config.default_max_tokens or None
        output = openai_format(call.response_format)
        body = _request(messages=_chat_messages(call), **_sampling(call, max_tokens), response_format=output)
        return await _answer(ctx, request, call, body, chat=True)

    @endpoint(ctx, family, "/v1/completions")
    async def completions(request: Request) -> Response:
        call = await read_json(request, _completion_decoder, max_bytes)
        max_tokens = call.max_tokens or COMPLETIONS_DEFAULT_MAX_TOKENS
        body = _request(prompt=_completion_prompt(call), **_sampling(call, max_tokens))
        return await _answer(ctx, request, call, body, chat=False)

    @endpoint(ctx, family, "/v1/models")
    async def models(request: Request) -> Response:
        ctx.keys.key_for(request.headers.get("authorization"))
        return json_response({"object": "list", "data": [_model_entry(ctx, name) for name in ctx.models.live()]})

    @endpoint(ctx, family, "/v1/models/{model_id}")
    async def model(request: Request) -> Response:
        ctx.keys.key_for(request.headers.get("authorization"))
        name = ctx.models.resolve(request.path_params["model_id"])
        if name not in ctx.models.live():
            raise ModelNotFound(f"model {name!r} is not served now (no worker for it)")
        return json_response(_model_entry(ctx, name))

    return [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", model, methods=["GET"]),
    ]


def _model_entry(ctx: HttpContext, name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": int(ctx.models.models[name].first_seen_s), "owned_by": "iris"}


async def _answer(
    ctx: HttpContext, request: Request, call: _OpenAICall, body: GenerateRequest, *, chat: bool
) -> Response:
    identity = ctx.keys.identify(request.headers, end_user=call.user)
    model = ctx.models.resolve(call.model)
    events = ctx.forwarder.open(
        body, model, identity, idempotency_key(request.headers, identity), queue_updates=call.stream
    )
    include_usage = call.stream_options is not None and call.stream_options.include_usage
    fmt = SseFormat(call.model, chat, include_usage)
    return await respond(
        ctx, request, ApiFamily.OPENAI, events, fmt, stream=call.stream, model=model, identity=identity
    )
