"""`HttpEngine`: forward leases to a model server Iris does not run (Ollama, or OpenAI-compatible: vLLM,
llama.cpp server), streaming, so Iris schedules in front of it.

Prompts go to `/api/generate` (Ollama, `raw`: the prompt is sent as is) or `/v1/completions`, messages to
`/api/chat` or `/v1/chat/completions`; sampling options and structured output are passed on
(`upstream_body`). A client that streams gets a streamed upstream call, one that does not a whole one.
Connections are pooled, one per slot, and each body is read to its end so its connection is reused.
The upstream's own token counts are used when it reports them; a call that is stopped early (cancel,
deadline) is closed, which makes the upstream stop generating, and its counts are the pieces received.
At load the upstream must answer and list the model, so a typo fails at start rather than per request.
`slots` is how many requests this worker sends the upstream at once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import httpx

from gpu_worker.engines.protocol import Continuation, EngineEvent, EngineInputError, Finished, Piece, StopSignal
from gpu_worker.engines.upstream_body import UpstreamApi, upstream_body
from schemas.messages import FinishReason, GenerateRequest
from schemas.model_cards import ModelCard

STOP_POLL_S = 0.05  # how often a non-streamed upstream call checks for a deadline or a cancel
_PATHS = {
    ("ollama", "prompt"): "/api/generate",
    ("ollama", "chat"): "/api/chat",
    ("openai", "prompt"): "/v1/completions",
    ("openai", "chat"): "/v1/chat/completions",
}
_MODEL_LIST_PATHS = {"ollama": "/api/tags", "openai": "/v1/models"}


class UpstreamError(RuntimeError):
    """The upstream server failed or answered something this engine cannot read."""


class HttpEngine:
    on_gpu = False
    max_suspended = 0  # the upstream owns its sequences: nothing to suspend here
    continues = False  # nor can it be handed the tokens of an earlier attempt

    def __init__(
        self,
        upstream_url: str,
        api: UpstreamApi,
        upstream_model: str,
        model_name: str,
        slots: int = 1,
        timeout_s: float = 300.0,
    ) -> None:
        if not upstream_url.startswith(("http://", "https://")):
            raise ValueError(f"--upstream {upstream_url!r}: expected an http:// or https:// URL")
        if not upstream_model:
            raise ValueError("--upstream-model is required with --engine http")
        self.upstream_url = upstream_url.rstrip("/")
        self.api: UpstreamApi = api
        self.upstream_model = upstream_model
        self.model_name = model_name
        self.slots = slots
        self.timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None

    async def load(self) -> None:
        # One connection per slot, all of them kept alive: a slot reuses its connection request after request.
        limits = httpx.Limits(max_connections=self.slots, max_keepalive_connections=self.slots, keepalive_expiry=60)
        self._client = httpx.AsyncClient(
            base_url=self.upstream_url, timeout=httpx.Timeout(self.timeout_s), limits=limits
        )
        path = _MODEL_LIST_PATHS[self.api]
        try:
            response = await self._client.get(path)
            response.raise_for_status()
            listed = _listed_models(self.api, response.json())
        except (httpx.HTTPError, ValueError) as exc:
            raise UpstreamError(f"upstream {self.upstream_url}{path} did not answer: {exc}") from exc
        if self.upstream_model not in listed:
            raise UpstreamError(
                f"upstream {self.upstream_url} does not serve model {self.upstream_model!r} (it lists {sorted(listed)})"
            )

    def model_card(self) -> ModelCard:
        """All this worker knows of a model another server runs: its name there (no GGUF, no template)."""
        return ModelCard(
            model=self.model_name,
            format="",
            family="",
            parameter_count=0,
            quantization="",
            context_per_slot=0,
            metadata={"general.name": self.upstream_model},
        )

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def request_body(self, request: GenerateRequest) -> tuple[str, dict[str, Any]]:
        """The upstream path and JSON body for one request."""
        kind = "prompt" if request.prompt is not None else "chat"
        return _PATHS[(self.api, kind)], upstream_body(self.api, self.upstream_model, request)

    async def generate(
        self, request: GenerateRequest, stop: StopSignal, continuation: Continuation | None = None
    ) -> AsyncIterator[EngineEvent]:
        assert self._client is not None, "engine not loaded"
        assert continuation is None, "an upstream cannot continue an earlier attempt"
        path, body = self.request_body(request)
        tally = _Tally()
        try:
            if request.stream:
                async for text in self._streamed(path, body, tally, stop):
                    yield Piece(text)
            else:
                text = await _unless_stopped(self._whole(path, body, tally), stop)
                if text:
                    yield Piece(text)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream {self.upstream_url}{path} failed: {exc!r}") from exc
        yield tally.finished(stop.reason)

    async def _streamed(self, path: str, body: dict[str, Any], tally: _Tally, stop: StopSignal) -> AsyncIterator[str]:
        assert self._client is not None
        async with self._client.stream("POST", path, json=body) as response:
            await _check_status(response)
            async for update in _updates(self.api, response):
                if stop.reason is not None:
                    return  # closing the unfinished response drops its connection: the upstream stops
                text = tally.take(update)
                if text:
                    yield text

    async def _whole(self, path: str, body: dict[str, Any], tally: _Tally) -> str:
        assert self._client is not None
        response = await self._client.post(path, json=body)
        await _check_status(response)
        try:
            answer = response.json()
        except ValueError as exc:
            raise UpstreamError(f"upstream answered with a body that is not JSON: {response.text[:200]!r}") from exc
        update = _ollama_update(answer) if self.api == "ollama" else _openai_update(answer, whole=True)
        return tally.take(update)


async def _unless_stopped(work: Awaitable[str], stop: StopSignal) -> str:
    """A whole (non-streamed) answer, given up when the stop signal fires (deadline, cancel)."""
    task = asyncio.ensure_future(work)
    try:
        while not task.done():
            await asyncio.wait([task], timeout=STOP_POLL_S)
            if stop.reason is not None and not task.done():
                task.cancel()  # closes the connection: the upstream stops generating
                return ""
        return task.result()
    finally:
        if not task.done():
            task.cancel()


class _Tally:
    """Pieces received, and the upstream's own counts and finish reason when it sends them."""

    def __init__(self) -> None:
        self.pieces = 0
        self.prompt_tokens = 0
        self.completion_tokens: int | None = None
        self.reason: FinishReason = "stop"

    def take(self, update: dict[str, Any]) -> str:
        text = str(update.get("text") or "")
        self.pieces += 1 if text else 0
        if "prompt_tokens" in update:
            self.prompt_tokens = int(update["prompt_tokens"])
        if "completion_tokens" in update:
            self.completion_tokens = int(update["completion_tokens"])
        if update.get("finish_reason") == "length":
            self.reason = "length"
        return text

    def finished(self, stopped: FinishReason | None) -> Finished:
        if stopped is not None:
            return Finished(stopped, self.prompt_tokens, self.pieces)
        completion = self.completion_tokens if self.completion_tokens is not None else self.pieces
        return Finished(self.reason, self.prompt_tokens, completion)


async def _check_status(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    detail = (await response.aread()).decode(errors="replace")[:500]
    message = f"upstream answered {response.status_code}: {detail}"
    if 400 <= response.status_code < 500 and response.status_code not in (401, 403, 404, 429):
        raise EngineInputError(message)  # the request itself was refused: the client's to fix
    raise UpstreamError(message)


async def _updates(api: UpstreamApi, response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Each streamed line as {text, finish_reason, prompt_tokens, completion_tokens} (keys when known)."""
    async for line in response.aiter_lines():
        line = line.strip()
        if api == "openai":
            if not line.startswith("data:"):
                continue
            line = line[len("data:") :].strip()
            if line == "[DONE]":
                continue  # read on to the end of the body, so the connection can be reused
        if not line:
            continue
        try:
            event = json.loads(line)
        except ValueError as exc:
            raise UpstreamError(f"upstream sent a line that is not JSON: {line[:200]!r}") from exc
        yield _ollama_update(event) if api == "ollama" else _openai_update(event)


def _ollama_update(event: dict[str, Any]) -> dict[str, Any]:
    if "error" in event:
        raise UpstreamError(f"upstream error: {event['error']}")
    update: dict[str, Any] = {"text": event.get("response") or (event.get("message") or {}).get("content", "")}
    if event.get("done"):
        update["finish_reason"] = event.get("done_reason", "stop")
        update["prompt_tokens"] = event.get("prompt_eval_count", 0)
        update["completion_tokens"] = event.get("eval_count", 0)
    return update


def _openai_update(event: dict[str, Any], whole: bool = False) -> dict[str, Any]:
    if "error" in event:
        raise UpstreamError(f"upstream error: {event['error']}")
    update: dict[str, Any] = {}
    for choice in event.get("choices") or []:
        message = choice.get("message" if whole else "delta") or {}
        update["text"] = choice.get("text") or message.get("content") or ""
        if choice.get("finish_reason"):
            update["finish_reason"] = choice["finish_reason"]
    usage = event.get("usage")
    if usage:
        update["prompt_tokens"] = usage.get("prompt_tokens", 0)
        update["completion_tokens"] = usage.get("completion_tokens", 0)
    return update


def _listed_models(api: UpstreamApi, listing: Any) -> set[str]:
    if api == "openai":
        return {str(m.get("id")) for m in listing.get("data", [])}
    names = {str(m.get(key)) for m in listing.get("models", []) for key in ("name", "model")}
    return names | {name.removesuffix(":latest") for name in names}  # Ollama's `mistral` is `mistral:latest`
