"""OpenAI's HTTP API on Iris: `/v1/chat/completions`, `/v1/completions` (SSE ending in `data: [DONE]`, or
one JSON body with `usage`), `/v1/models`, and errors in OpenAI's `{"error": {message, type, code}}` shape.

Only what Iris can honour is accepted: one choice (`n: 1`), text content, no tools or JSON mode; other known
sampling knobs (`presence_penalty`, `logit_bias`, …) and unknown fields are ignored, as vLLM does.
`user` becomes the fairness key under the caller's API key. Iris's `deadline` and `max_inflight` cut-offs
are reported as `finish_reason: "length"` (an answer cut short), the nearest OpenAI value.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.http_answer import HttpContext, endpoint, respond
from gateway.http_io import ApiFamily, error_body, json_response, read_json
from schemas.errors import InvalidRequest, IrisError
from schemas.messages import MAX_STOP_SEQUENCES, MAX_TOKENS_LIMIT, ChatMessage, GenerateRequest, Result

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's documented default for /v1/completions
_json = msgspec.json.Encoder()
MaxTokens = Annotated[int, Meta(ge=1, le=MAX_TOKENS_LIMIT)]


class TextPart(msgspec.Struct, frozen=True):
    type: str
    text: str = ""


class OpenAIMessage(msgspec.Struct, frozen=True):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None


class StreamOptions(msgspec.Struct, frozen=True):
    include_usage: bool = False


class ResponseFormat(msgspec.Struct, frozen=True):
    type: str = "text"


class _OpenAICall(msgspec.Struct, frozen=True):
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


class ChatCompletionRequest(_OpenAICall, frozen=True):
    messages: list[OpenAIMessage] = []
    max_completion_tokens: MaxTokens | None = None
    tools: list[Any] | None = None
    response_format: ResponseFormat | None = None


class CompletionRequest(_OpenAICall, frozen=True):
    prompt: str | list[str] = ""
    echo: bool = False
    suffix: str | None = None


_chat_decoder = msgspec.json.Decoder(ChatCompletionRequest)
_completion_decoder = msgspec.json.Decoder(CompletionRequest)


def _sampling(call: _OpenAICall, max_tokens: int) -> dict[str, Any]:
    if not call.model:
        raise InvalidRequest("model is required - at $.model")
    stop = [call.stop] if isinstance(call.stop, str) else (call.stop or [])
    if len(stop) > MAX_STOP_SEQUENCES or any(not 1 <= len(s) <= 64 for s in stop):
        raise InvalidRequest(f"stop takes at most {MAX_STOP_SEQUENCES} strings of 1-64 characters - at $.stop")
    fields: dict[str, Any] = {"max_tokens": max_tokens, "stop": stop, "stream": call.stream}
    for name in ("temperature", "top_p", "seed"):
        value = getattr(call, name)
        if value is not None:
            fields[name] = value
    return fields


def _chat_messages(call: ChatCompletionRequest) -> list[ChatMessage]:
    if not call.messages:
        raise InvalidRequest("messages must hold at least one message - at $.messages")
    if call.tools:
        raise InvalidRequest("tools are not supported by Iris - at $.tools")
    if call.response_format is not None and call.response_format.type != "text":
        raise InvalidRequest("only response_format type 'text' is supported - at $.response_format.type")
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


def _completion_prompt(call: CompletionRequest) -> str:
    if call.echo or call.suffix:
        raise InvalidRequest("echo and suffix are not supported by Iris - at $.echo / $.suffix")
    if isinstance(call.prompt, str):
        return call.prompt
    if len(call.prompt) != 1:
        raise InvalidRequest("send one prompt per request (a list must hold exactly one string) - at $.prompt")
    return call.prompt[0]


def openai_finish_reason(reason: str) -> str:
    return reason if reason in ("stop", "length") else "length"


def _usage(result: Result) -> dict[str, int]:
    prompt, completion = result.usage.prompt_tokens, result.usage.completion_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class _SseFormat:
    media_type = "text/event-stream"

    def __init__(self, model: str, chat: bool, include_usage: bool) -> None:
        self.model, self.chat, self.include_usage = model, chat, include_usage
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"
        self._role_sent = False

    def _event(self, body: Any) -> bytes:
        return b"data: " + _json.encode(body) + b"\n\n"

    def _chunk(self, choices: list[Any], **extra: Any) -> dict[str, Any]:
        kind = self.object + ".chunk" if self.chat else self.object
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }

    def _choice(self, text: str | None, finish_reason: str | None) -> dict[str, Any]:
        if not self.chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        delta: dict[str, str] = {} if text is None else {"content": text}
        if not self._role_sent:
            delta["role"] = "assistant"
            self._role_sent = True
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    def delta(self, text: str) -> bytes:
        return self._event(self._chunk([self._choice(text, None)]))

    def end(self, result: Result) -> bytes:
        last = self._event(self._chunk([self._choice(None, openai_finish_reason(result.finish_reason))]))
        if self.include_usage:
            last += self._event(self._chunk([], usage=_usage(result)))
        return last + b"data: [DONE]\n\n"

    def stream_error(self, exc: IrisError) -> bytes:
        return self._event(error_body(ApiFamily.OPENAI, exc))

    def whole(self, result: Result) -> Any:
        reason = openai_finish_reason(result.finish_reason)
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": result.text}}
        else:
            choice = {"index": 0, "text": result.text}
        choice.update(logprobs=None, finish_reason=reason)
        body = {"id": self.id, "object": self.object, "created": self.created, "model": self.model}
        return {**body, "choices": [choice], "usage": _usage(result)}


def openai_routes(ctx: HttpContext) -> list[Route]:
    family = ApiFamily.OPENAI
    max_bytes = ctx.config.max_body_bytes

    @endpoint(ctx, family, "/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        call = await read_json(request, _chat_decoder, max_bytes)
        max_tokens = call.max_completion_tokens or call.max_tokens or ctx.config.default_max_tokens
        body = GenerateRequest(messages=_chat_messages(call), **_sampling(call, max_tokens))
        return await _answer(ctx, request, call, body, chat=True)

    @endpoint(ctx, family, "/v1/completions")
    async def completions(request: Request) -> Response:
        call = await read_json(request, _completion_decoder, max_bytes)
        max_tokens = call.max_tokens or COMPLETIONS_DEFAULT_MAX_TOKENS
        body = GenerateRequest(prompt=_completion_prompt(call), **_sampling(call, max_tokens))
        return await _answer(ctx, request, call, body, chat=False)

    @endpoint(ctx, family, "/v1/models")
    async def models(request: Request) -> Response:
        ctx.keys.key_for(request.headers.get("authorization"))
        data = [
            {"id": name, "object": "model", "created": int(ctx.models.models[name].first_seen_s), "owned_by": "iris"}
            for name in ctx.models.live()
        ]
        return json_response({"object": "list", "data": data})

    return [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
    ]


async def _answer(
    ctx: HttpContext, request: Request, call: _OpenAICall, body: GenerateRequest, *, chat: bool
) -> Response:
    identity = ctx.keys.identify(request.headers, end_user=call.user)
    model = ctx.models.resolve(call.model)
    events = ctx.forwarder.open(body, model, identity)
    include_usage = call.stream_options is not None and call.stream_options.include_usage
    fmt = _SseFormat(call.model, chat, include_usage)
    return await respond(
        ctx, request, ApiFamily.OPENAI, events, fmt, stream=call.stream, model=model, identity=identity
    )
