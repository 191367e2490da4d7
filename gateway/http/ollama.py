"""Ollama's HTTP API on Iris: `/api/generate`, `/api/chat` (NDJSON stream or `stream:false`), `/api/tags`,
`/api/ps`, `/api/version` (`/api/show` is `gateway.http.show`).

Field names and `options` are Ollama's (`sampling_options`): no `num_predict` (or -1/-2) generates until a
stop or the slot's context is full (or the gateway's `default_max_tokens` when set); `format` is
structured output; `logprobs`/`top_logprobs` as Ollama 0.12 sends them. Unknown fields and options Iris
cannot honour are a 400 naming them. `/api/generate` formats the prompt with the model's chat template
(and `system`) unless `raw` is true, as Ollama does. Durations are nanoseconds; `done_reason` is `stop`
or `length`, with `iris_finish_reason` (`deadline`, `max_inflight`) when an Iris cut-off ended it. A
streamed request waiting in the queue gets empty answer lines carrying `iris_queue: {position, eta_s}`.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.forwarding import Delta
from gateway.http.answer import HttpContext, endpoint, respond
from gateway.http.idempotency import idempotency_key
from gateway.http.io import ApiFamily, error_body, json_response, read_json
from gateway.http.sampling_options import OllamaOptions, ollama_fields, ollama_format, ollama_logprobs
from schemas.errors import InvalidRequest, IrisError
from schemas.messages import ChatMessage, GenerateRequest, QueueUpdate, Result, TokenLogprob

IRIS_VERSION = "0.1.0"
_json = msgspec.json.Encoder()


class OllamaMessage(msgspec.Struct, frozen=True):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None


class _OllamaCall(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    model: str = ""
    stream: bool = True
    options: OllamaOptions | None = None
    format: Any = None
    images: list[str] | None = None
    tools: list[Any] | None = None
    keep_alive: float | str | None = None  # Iris keeps every served model loaded
    think: bool | str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


class OllamaGenerate(_OllamaCall, frozen=True):
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    suffix: str | None = None
    template: str | None = None
    context: list[int] | None = None


class OllamaChat(_OllamaCall, frozen=True):
    messages: list[OllamaMessage] = []


_generate_decoder = msgspec.json.Decoder(OllamaGenerate)
_chat_decoder = msgspec.json.Decoder(OllamaChat)


def _unsupported(call: _OllamaCall, messages: list[OllamaMessage]) -> None:
    if not call.model:
        raise InvalidRequest("model is required - at $.model")
    if call.tools:
        raise InvalidRequest("tools are not supported by Iris - at $.tools")
    if call.think:
        raise InvalidRequest("think (reasoning output) is not supported by Iris - at $.think")
    if call.keep_alive in (0, "0", "0s", "0m"):
        raise InvalidRequest("keep_alive 0 (unload) is not supported: Iris keeps models loaded - at $.keep_alive")
    if isinstance(call, OllamaGenerate):
        if call.suffix:
            raise InvalidRequest("suffix (fill-in-the-middle) is not supported by Iris - at $.suffix")
        if call.template:
            raise InvalidRequest("template is not supported: Iris uses the model's own chat template - at $.template")
        if call.context:
            raise InvalidRequest("context (the old conversation state) is not supported; use /api/chat - at $.context")
    if call.images or any(m.images for m in messages):
        raise InvalidRequest("images are not supported by Iris models - at $.images")


def _generate_request(call: _OllamaCall, default_max_tokens: int | None, **text: Any) -> GenerateRequest:
    fields: dict[str, Any] = dict(text, stream=call.stream, **ollama_fields(call.options, default_max_tokens))
    fields.update(ollama_logprobs(call.logprobs, call.top_logprobs))
    return GenerateRequest(**fields, response_format=ollama_format(call.format))


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _final_fields(result: Result) -> dict[str, Any]:
    fields = {
        "done": True,
        "done_reason": ollama_done_reason(result.finish_reason),
        "total_duration": int((result.timings.queued_ms + result.timings.run_ms) * 1e6),
        "load_duration": 0,
        "prompt_eval_count": result.usage.prompt_tokens,
        "prompt_eval_duration": 0,
        "eval_count": result.usage.completion_tokens,
        "eval_duration": int(result.timings.run_ms * 1e6),
    }
    if result.finish_reason != fields["done_reason"]:
        fields["iris_finish_reason"] = result.finish_reason  # Iris's own cut-off: deadline, max_inflight
    return fields


def ollama_done_reason(reason: str) -> str:
    """Ollama's values are `stop` and `length`; Iris's cut-offs (deadline, max_inflight) end an answer
    short, which is `length`, and `iris_finish_reason` says which one."""
    return reason if reason == "stop" else "length"


class _NdjsonFormat:
    media_type = "application/x-ndjson"

    def __init__(self, model: str, text_field: str) -> None:
        self.model, self.text_field = model, text_field

    def _text(self, text: str) -> dict[str, Any]:
        if self.text_field == "message":
            return {"message": {"role": "assistant", "content": text}}
        return {"response": text}

    def _line(self, body: dict[str, Any]) -> bytes:
        return _json.encode(body) + b"\n"

    def delta(self, delta: Delta) -> bytes:
        body = {"model": self.model, "created_at": _now_iso(), **self._text(delta.text), "done": False}
        if delta.logprobs is not None:
            body["logprobs"] = ollama_logprobs_body(delta.logprobs)
        return self._line(body)

    def queued(self, update: QueueUpdate | None) -> bytes:
        """An empty answer line (which every Ollama client reads as no text yet) carrying `iris_queue`."""
        body = {"model": self.model, "created_at": _now_iso(), **self._text(""), "done": False}
        if update is not None:
            body["iris_queue"] = {"position": update.position, "eta_s": round(update.eta_s, 1)}
        return self._line(body)

    def keepalive(self, update: QueueUpdate | None) -> bytes:
        return self.queued(update)

    def end(self, result: Result) -> bytes:
        return self._line(self._last(result, ""))

    def stream_error(self, exc: IrisError) -> bytes:
        return self._line(error_body(ApiFamily.OLLAMA, exc))

    def whole(self, result: Result) -> Any:
        body = self._last(result, result.text)
        if result.logprobs is not None:
            body["logprobs"] = ollama_logprobs_body(result.logprobs)
        return body

    def _last(self, result: Result, text: str) -> dict[str, Any]:
        return {"model": self.model, "created_at": _now_iso(), **self._text(text), **_final_fields(result)}


def ollama_logprobs_body(logprobs: list[TokenLogprob]) -> list[dict[str, Any]]:
    return [
        {
            "token": lp.token,
            "logprob": lp.logprob,
            "top_logprobs": [{"token": alt.token, "logprob": alt.logprob} for alt in lp.top],
        }
        for lp in logprobs
    ]


def ollama_routes(ctx: HttpContext) -> list[Route]:
    return [*_answer_routes(ctx), *_listing_routes(ctx)]


def _answer_routes(ctx: HttpContext) -> list[Route]:
    family = ApiFamily.OLLAMA
    max_bytes, default_max_tokens = ctx.config.max_body_bytes, ctx.config.default_max_tokens or None

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
        events = ctx.forwarder.open(
            body, model, identity, idempotency_key(request.headers, identity), queue_updates=call.stream
        )
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
        events = ctx.forwarder.open(
            body, model, identity, idempotency_key(request.headers, identity), queue_updates=call.stream
        )
        fmt = _NdjsonFormat(call.model, "message")
        return await respond(ctx, request, family, events, fmt, stream=call.stream, model=model, identity=identity)

    return [Route("/api/generate", generate, methods=["POST"]), Route("/api/chat", chat, methods=["POST"])]


def _listing_routes(ctx: HttpContext) -> list[Route]:
    family = ApiFamily.OLLAMA

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
