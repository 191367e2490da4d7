"""OpenAI's answer shapes: SSE chunks ending in `data: [DONE]` or one JSON body, logprobs in the chat
(`content: [{token, logprob, bytes, top_logprobs}]`) and legacy completions (`tokens`,
`token_logprobs`, `top_logprobs`, `text_offset`) shapes, and the finish reason mapping.

While a streamed request waits in the queue, SSE comment lines carry its position
(`: iris-queue {"position": 3, "eta_s": 12.5}`) and `: keep-alive` fills silences; SSE readers, the
official clients among them, skip comment lines.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec

from gateway.forwarding import Delta
from gateway.http.io import ApiFamily, error_body
from schemas.errors import IrisError
from schemas.messages import QueueUpdate, Result, TokenLogprob

_json = msgspec.json.Encoder()


def openai_finish_reason(reason: str) -> str:
    """OpenAI's values are `stop` and `length`; Iris's cut-offs (deadline, max_inflight) end an answer
    short, which is `length`, and the choice's `iris_finish_reason` says which one."""
    return reason if reason in ("stop", "length") else "length"


def usage_body(result: Result) -> dict[str, int]:
    prompt, completion = result.usage.prompt_tokens, result.usage.completion_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class SseFormat:
    media_type = "text/event-stream"

    def __init__(self, model: str, chat: bool, include_usage: bool) -> None:
        self.model, self.chat, self.include_usage = model, chat, include_usage
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"
        self._role_sent = False
        self._text_offset = 0  # completions logprobs: where the next token starts in the answer

    def _event(self, body: Any) -> bytes:
        return b"data: " + _json.encode(body) + b"\n\n"

    def _chunk(self, choices: list[Any], **extra: Any) -> dict[str, Any]:
        kind = self.object + ".chunk" if self.chat else self.object
        body = {"id": self.id, "object": kind, "created": self.created, "model": self.model}
        return {**body, "choices": choices, **extra}

    def _choice(self, delta: Delta | None, finish_reason: str | None, iris_reason: str = "") -> dict[str, Any]:
        logprobs = self._logprobs(delta.logprobs) if delta is not None else None
        if not self.chat:
            choice = {"index": 0, "text": delta.text if delta else "", "logprobs": logprobs}
        else:
            content: dict[str, str] = {} if delta is None else {"content": delta.text}
            if not self._role_sent:
                content["role"] = "assistant"
                self._role_sent = True
            choice = {"index": 0, "delta": content, "logprobs": logprobs}
        choice["finish_reason"] = finish_reason
        if iris_reason:
            choice["iris_finish_reason"] = iris_reason
        return choice

    def _logprobs(self, logprobs: list[TokenLogprob] | None) -> dict[str, Any] | None:
        if logprobs is None:
            return None
        if self.chat:
            return {"content": [chat_logprob(lp) for lp in logprobs], "refusal": None}
        offsets = []
        for lp in logprobs:
            offsets.append(self._text_offset)
            self._text_offset += len(lp.token)
        return {
            "tokens": [lp.token for lp in logprobs],
            "token_logprobs": [lp.logprob for lp in logprobs],
            "top_logprobs": [{alt.token: alt.logprob for alt in lp.top} for lp in logprobs],
            "text_offset": offsets,
        }

    def delta(self, delta: Delta) -> bytes:
        return self._event(self._chunk([self._choice(delta, None)]))

    def queued(self, update: QueueUpdate) -> bytes:
        return b": iris-queue " + _json.encode({"position": update.position, "eta_s": round(update.eta_s, 1)}) + b"\n\n"

    def keepalive(self, update: QueueUpdate | None) -> bytes:
        return self.queued(update) if update is not None else b": keep-alive\n\n"

    def end(self, result: Result) -> bytes:
        reason = openai_finish_reason(result.finish_reason)
        iris_reason = result.finish_reason if reason != result.finish_reason else ""
        last = self._event(self._chunk([self._choice(None, reason, iris_reason)]))
        if self.include_usage:
            last += self._event(self._chunk([], usage=usage_body(result)))
        return last + b"data: [DONE]\n\n"

    def stream_error(self, exc: IrisError) -> bytes:
        return self._event(error_body(ApiFamily.OPENAI, exc))

    def whole(self, result: Result) -> Any:
        reason = openai_finish_reason(result.finish_reason)
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": result.text}}
        else:
            choice = {"index": 0, "text": result.text}
        choice.update(logprobs=self._logprobs(result.logprobs), finish_reason=reason)
        if reason != result.finish_reason:
            choice["iris_finish_reason"] = result.finish_reason
        body = {"id": self.id, "object": self.object, "created": self.created, "model": self.model}
        return {**body, "choices": [choice], "usage": usage_body(result)}


def chat_logprob(lp: TokenLogprob) -> dict[str, Any]:
    return {
        "token": lp.token,
        "logprob": lp.logprob,
        "bytes": list(lp.token.encode()),
        "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode())} for t in lp.top],
    }
