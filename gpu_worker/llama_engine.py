"""`LlamaCppEngine`: a GGUF model through llama-cpp-python, off the event loop.

Each slot owns one `Llama` context (weights are mmap'ed and shared between them on CPU); a generation
borrows a free context, runs the token loop in that slot's thread and hands pieces to the event loop.
The token loop is ours rather than `create_completion`'s so that token counts are exact, stop strings
and UTF-8 boundaries are handled once, and a `StopSignal` ends generation within one token. Chat
requests use the model's own chat template from its GGUF metadata; a model without one gets a plain
"Role: text" prompt.
"""

from __future__ import annotations

import asyncio
import codecs
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gpu_worker.engine import EngineEvent, EngineInputError, Finished, Piece, StopSignal
from schemas.messages import FinishReason, GenerateRequest

_DONE = object()


class LlamaCppEngine:
    def __init__(
        self,
        model_path: str,
        model_name: str,
        slots: int = 1,
        ctx_per_slot: int = 2048,
        n_gpu_layers: int = 0,
        n_threads: int | None = None,
    ) -> None:
        self.model_path = model_path
        self.model_name = model_name
        self.slots = slots
        self.ctx_per_slot = ctx_per_slot
        self.n_gpu_layers = n_gpu_layers
        self.n_threads = n_threads or os.cpu_count() or 1
        self.on_gpu = False
        self.last_prompt = ""  # the exact text the model saw last (templates are tested through it)
        self._free: asyncio.Queue[Any] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="llama-slot")
        self._template: Any = None

    async def load(self) -> None:
        if not os.path.isfile(self.model_path):
            raise FileNotFoundError(f"model file not found: {self.model_path}")
        loop = asyncio.get_running_loop()
        for _ in range(self.slots):
            llm = await loop.run_in_executor(self._executor, self._load_one)
            self._free.put_nowait(llm)
        import llama_cpp

        self.on_gpu = self.n_gpu_layers != 0 and bool(llama_cpp.llama_supports_gpu_offload())

    def _load_one(self) -> Any:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        llm = Llama(
            model_path=self.model_path,
            n_ctx=self.ctx_per_slot,
            n_gpu_layers=self.n_gpu_layers,
            n_threads=self.n_threads,
            verbose=False,
        )
        template = llm.metadata.get("tokenizer.chat_template")
        if template and self._template is None:
            self._template = Jinja2ChatFormatter(
                template=template,
                eos_token=llm._model.token_get_text(llm.token_eos()),
                bos_token=llm._model.token_get_text(llm.token_bos()),
            )
        return llm

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def format_prompt(self, request: GenerateRequest) -> tuple[str, list[str]]:
        """The text the model sees, and extra stop strings the format implies."""
        if request.prompt is not None:
            return request.prompt, []
        messages = [{"role": m.role, "content": m.content} for m in request.messages or []]
        if self._template is not None:
            formatted = self._template(messages=messages)
            stops = formatted.stop or []
            return formatted.prompt, [stops] if isinstance(stops, str) else list(stops)
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        return "\n".join(lines) + "\nAssistant:", ["\nUser:", "\nSystem:"]

    async def generate(self, request: GenerateRequest, stop: StopSignal) -> AsyncIterator[EngineEvent]:
        prompt, format_stops = self.format_prompt(request)
        self.last_prompt = prompt
        llm = await self._free.get()
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()

        def emit(item: Any) -> None:
            loop.call_soon_threadsafe(events.put_nowait, item)

        job = loop.run_in_executor(
            self._executor, _run_tokens, llm, prompt, request, [*request.stop, *format_stops], stop, emit
        )
        try:
            while (item := await events.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.stop("cancelled")  # no-op when it already finished; ends the thread if we were abandoned
            try:
                await job
            finally:
                self._free.put_nowait(llm)


def _run_tokens(llm: Any, prompt: str, request: GenerateRequest, stops: list[str], stop: StopSignal, emit: Any) -> None:
    """The token loop, in a slot thread. Emits Pieces, one Finished (or an exception), then _DONE."""
    try:
        emit_finished = _token_loop(llm, prompt, request, stops, stop, emit)
        emit(emit_finished)
    except BaseException as exc:  # handed to the event loop, re-raised there with its traceback
        emit(exc)
    finally:
        emit(_DONE)


def _token_loop(
    llm: Any, prompt: str, request: GenerateRequest, stops: list[str], stop: StopSignal, emit: Any
) -> Finished:
    import llama_cpp

    bos_text = llm._model.token_get_text(llm.token_bos())
    prompt_tokens = llm.tokenize(prompt.encode(), add_bos=not prompt.startswith(bos_text), special=True)
    if len(prompt_tokens) + request.max_tokens > llm.n_ctx():
        raise EngineInputError(
            f"prompt ({len(prompt_tokens)} tokens) + max_tokens ({request.max_tokens}) exceeds the "
            f"context of {llm.n_ctx()} tokens per slot"
        )
    if request.seed is not None:
        llm.set_seed(request.seed)
    text = _StopTextBuffer(stops)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    completion: list[int] = []
    reason: FinishReason = "length"
    for token in llm.generate(prompt_tokens, temp=request.temperature, top_p=request.top_p):
        if stop.reason is not None:
            reason = stop.reason
            break
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
            reason = "stop"
            break
        raw = llm.detokenize([token], prev_tokens=prompt_tokens + completion)
        completion.append(token)
        ready, hit_stop = text.feed(decoder.decode(raw))
        if ready:
            emit(Piece(ready))
        if hit_stop:
            reason = "stop"
            break
        if len(completion) >= request.max_tokens:
            break
    tail = text.flush(decoder.decode(b"", final=True))
    if tail:
        emit(Piece(tail))
    return Finished(reason, prompt_tokens=len(prompt_tokens), completion_tokens=len(completion))


class _StopTextBuffer:
    """Holds back just enough text to recognise a stop string split across tokens."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.pending = ""
        self.stopped = False

    def feed(self, new_text: str) -> tuple[str, bool]:
        self.pending += new_text
        for stop_text in self.stops:
            at = self.pending.find(stop_text)
            if at >= 0:
                ready, self.pending, self.stopped = self.pending[:at], "", True
                return ready, True
        cut = len(self.pending) - self.hold
        if cut <= 0:
            return "", False
        ready, self.pending = self.pending[:cut], self.pending[cut:]
        return ready, False

    def flush(self, final_text: str) -> str:
        if self.stopped:
            return ""
        ready, _ = self.feed(final_text)
        rest, self.pending = ready + self.pending, ""
        return rest
