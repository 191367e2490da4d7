"""Ollama's HTTP API on Iris: `/api/generate`, `/api/chat` (NDJSON stream or `stream:false`), `/api/tags`,
`/api/ps`, `/api/version`.

Field names and `options` are Ollama's: `num_predict` (-1/-2 = the gateway's `default_max_tokens`),
`temperature`, `top_p`, `seed`, `stop`; options Iris has no use for (`num_ctx`, `top_k`, …) are ignored as
Ollama ignores unknown ones. `/api/generate` formats the prompt with the model's chat template (and
`system`) unless `raw` is true, as Ollama does. Durations are nanoseconds; `done_reason` is Iris's
`finish_reason` (`stop`, `length`, `deadline`, `max_inflight`).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
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

IRIS_VERSION = "0.1.0"
_json = msgspec.json.Encoder()


class OllamaOptions(msgspec.Struct, frozen=True):
    num_predict: Annotated[int, Meta(ge=-2, le=MAX_TOKENS_LIMIT)] | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] | None = None
    seed: Annotated[int, Meta(ge=-1, le=2**31 - 1)] | None = None
    stop: Annotated[list[Annotated[str, Meta(min_length=1, max_length=64)]], Meta(max_length=MAX_STOP_SEQUENCES)] = []


class OllamaMessage(msgspec.Struct, frozen=True):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None


class _OllamaCall(msgspec.Struct, frozen=True):
    model: str = ""
    stream: bool = True
    options: OllamaOptions | None = None
    format: Any = None
    images: list[str] | None = None
    tools: list[Any] | None = None


class OllamaGenerate(_OllamaCall, frozen=True):
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    suffix: str | None = None


class OllamaChat(_OllamaCall, frozen=True):
    messages: list[OllamaMessage] = []


_generate_decoder = msgspec.json.Decoder(OllamaGenerate)
_chat_decoder = msgspec.json.Decoder(OllamaChat)


def _unsupported(call: _OllamaCall, messages: list[OllamaMessage]) -> None:
    if not call.model:
        raise InvalidRequest("model is required - at $.model")
    if call.format:
        raise InvalidRequest("format (structured output) is not supported by Iris - at $.format")
    if call.tools:
        raise InvalidRequest("tools are not supported by Iris - at $.tools")
    if isinstance(call, OllamaGenerate) and call.suffix:
        raise InvalidRequest("suffix (fill-in-the-middle) is not supported by Iris - at $.suffix")
    if call.images or any(m.images for m in messages):
        raise InvalidRequest("images are not supported by Iris models - at $.images")


def _generate_request(call: _OllamaCall, default_max_tokens: int, **text: Any) -> GenerateRequest:
    o = call.options or OllamaOptions()
    fields: dict[str, Any] = dict(text, stop=o.stop, stream=call.stream)
    fields["max_tokens"] = default_max_tokens if o.num_predict in (None, -1, -2) else o.num_predict
    if o.temperature is not None:
        fields["temperature"] = o.temperature
    if o.top_p is not None:
        fields["top_p"] = o.top_p
    if o.seed is not None and o.seed >= 0:
        fields["seed"] = o.seed
    if fields["max_tokens"] == 0:
        raise InvalidRequest("options.num_predict must be -1, -2 or at least 1 - at $.options.num_predict")
    return GenerateRequest(**fields)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _final_fields(result: Result) -> dict[str, Any]:
    return {
        "done": True,
        "done_reason": result.finish_reason,
        "total_duration": int((result.timings.queued_ms + result.timings.run_ms) * 1e6),
        "load_duration": 0,
        "prompt_eval_count": result.usage.prompt_tokens,
        "prompt_eval_duration": 0,
        "eval_count": result.usage.completion_tokens,
        "eval_duration": int(result.timings.run_ms * 1e6),
    }


class _NdjsonFormat:
    media_type = "application/x-ndjson"

    def __init__(self, model: str, text_field: str) -> None:
        self.model, self.text_field = model, text_field

    def _text(self, text: str) -> dict[str, Any]:
        if self.text_field == "message":
            return {"message": {"role": "assistant", "content": text}}
        return {"response": text}

    def delta(self, text: str) -> bytes:
        return _json.encode({"model": self.model, "created_at": _now_iso(), **self._text(text), "done": False}) + b"\n"

    def end(self, result: Result) -> bytes:
        return _json.encode(self._last(result, "")) + b"\n"

    def stream_error(self, exc: IrisError) -> bytes:
        return _json.encode(error_body(ApiFamily.OLLAMA, exc)) + b"\n"

    def whole(self, result: Result) -> Any:
        return self._last(result, result.text)

    def _last(self, result: Result, text: str) -> dict[str, Any]:
        return {"model": self.model, "created_at": _now_iso(), **self._text(text), **_final_fields(result)}


def ollama_routes(ctx: HttpContext) -> list[Route]:
    family = ApiFamily.OLLAMA
    max_bytes, default_max_tokens = ctx.config.max_body_bytes, ctx.config.default_max_tokens

    @endpoint(ctx, family, "/api/generate")
    async def generate(request: Request) -> Response:
        call = await read_json(request, _generate_decoder, max_bytes)
        _unsupported(call, [])
        identity = ctx.keys.identify(request.headers)
        fmt = _NdjsonFormat(call.model, "response")
        if not call.prompt and not call.system:  # Ollama: an empty prompt only loads the model
            ctx.models.resolve(call.model)
            return json_response({"model": call.model, "created_at": _now_iso(), "response": "", "done": True})
        if call.raw:
            body = _generate_request(call, default_max_tokens, prompt=call.prompt)
        else:
            turns = ([ChatMessage("system", call.system)] if call.system else []) + [ChatMessage("user", call.prompt)]
            body = _generate_request(call, default_max_tokens, messages=turns)
        model = ctx.models.resolve(call.model)
        events = ctx.forwarder.open(body, model, identity)
        return await respond(ctx, request, family, events, fmt, stream=call.stream, model=model, identity=identity)

    @endpoint(ctx, family, "/api/chat")
    async def chat(request: Request) -> Response:
        call = await read_json(request, _chat_decoder, max_bytes)
        _unsupported(call, call.messages)
        if not call.messages:
            raise InvalidRequest("messages must hold at least one message - at $.messages")
        identity = ctx.keys.identify(request.headers)
        turns = [ChatMessage(m.role, m.content) for m in call.messages]
        body = _generate_request(call, default_max_tokens, messages=turns)
        model = ctx.models.resolve(call.model)
        events = ctx.forwarder.open(body, model, identity)
        fmt = _NdjsonFormat(call.model, "message")
        return await respond(ctx, request, family, events, fmt, stream=call.stream, model=model, identity=identity)

    @endpoint(ctx, family, "/api/tags")
    async def tags(request: Request) -> Response:
        ctx.keys.key_for(request.headers.get("authorization"))
        return json_response({"models": [_model_entry(name, ctx) for name in ctx.models.live()]})

    @endpoint(ctx, family, "/api/ps")
    async def ps(request: Request) -> Response:
        ctx.keys.key_for(request.headers.get("authorization"))
        entries = []
        for name, beats in ctx.models.live().items():
            iris = {
                "workers": len(beats),
                "slots": sum(b.slots for b in beats),
                "free_slots": sum(b.free_slots for b in beats),
                "gpu": any(b.gpu for b in beats),
                "tokens_per_s": round(sum(b.tokens_per_s for b in beats), 2),
            }
            entries.append(
                {**_model_entry(name, ctx), "expires_at": "9999-12-31T00:00:00Z", "size_vram": 0, "iris": iris}
            )
        return json_response({"models": entries})

    @endpoint(ctx, family, "/api/version")
    async def version(request: Request) -> Response:
        return json_response({"version": IRIS_VERSION})

    return [
        Route("/api/generate", generate, methods=["POST"]),
        Route("/api/chat", chat, methods=["POST"]),
        Route("/api/tags", tags, methods=["GET"]),
        Route("/api/ps", ps, methods=["GET"]),
        Route("/api/version", version, methods=["GET"]),
    ]


def _model_entry(name: str, ctx: HttpContext) -> dict[str, Any]:
    first_seen_s = ctx.models.models[name].first_seen_s
    return {
        "name": f"{name}:latest",
        "model": f"{name}:latest",
        "modified_at": datetime.fromtimestamp(first_seen_s, UTC).isoformat().replace("+00:00", "Z"),
        "size": 0,
        "digest": hashlib.sha256(name.encode()).hexdigest(),
        "details": {"format": "gguf", "family": "", "parameter_size": "", "quantization_level": ""},
    }
