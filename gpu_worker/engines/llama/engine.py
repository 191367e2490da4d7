"""`LlamaCppEngine`: a GGUF model through llama-cpp-python's low-level API, with continuous batching.

One model, one context with `n_seq_max = slots + max_suspended`: every running request is a sequence in one KV cache
(split by sequence id, `ctx_per_slot` cells each), and one `llama_decode` per step advances them all (`BatchLoop`, in
its own thread). Requests join between steps and leave at once when they finish or are stopped. Per request: its own
sampler chain (`llama_sampler`: sampling options, penalties, logit bias, a grammar for structured output), exact token
counts, stop strings across tokens, UTF-8 boundaries, logprobs (`Sequence`). A sequence can be suspended and resumed
(`parking`: its cells kept, its state saved to host memory, or re-prefilled), and a generation can continue an earlier
attempt's tokens. No `max_tokens` means until a stop or the slot's context is full; a larger one is clipped to it.
Chat requests use the model's own chat template from its GGUF metadata; a model without one gets a plain "Role: text"
prompt that stops where the model starts the next turn. GPU options are checked against the build before the model
loads (`offload.check_offload`).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
from collections.abc import AsyncIterator
from typing import Any

from jinja2.exceptions import TemplateError

from gpu_worker.engines.llama.batch import BatchLoop
from gpu_worker.engines.llama.context import LoadedModel, batch_tokens, load_model, new_context
from gpu_worker.engines.llama.model_card import llama_model_card
from gpu_worker.engines.llama.offload import Offload
from gpu_worker.engines.llama.parking import SuspendPolicy
from gpu_worker.engines.llama.sampler import make_sampler
from gpu_worker.engines.llama.sequence import DONE, Sequence, token_piece
from gpu_worker.engines.protocol import (
    Continuation,
    EngineEvent,
    EngineInputError,
    Finished,
    Piece,
    Resumed,
    StopSignal,
    Suspended,
)
from schemas.messages import GenerateRequest
from schemas.model_cards import ModelCard

# The fallback "Role: text" format has no end-of-turn token: the answer ends where the model starts a turn
# (the line break before the marker goes with it; the bare markers catch a turn at the very start).
FALLBACK_TURN_STOPS = ("\nUser:", "\nAssistant:", "\nSystem:", "\nTool:", "User:", "Assistant:")


class LlamaCppEngine:
    continues = True

    def __init__(
        self,
        model_path: str,
        model_name: str,
        slots: int = 1,
        ctx_per_slot: int = 2048,
        n_threads: int | None = None,
        offload: Offload | None = None,
        kv_unified: bool = True,
        suspend: SuspendPolicy | None = None,
    ) -> None:
        self.model_path = model_path
        self.model_name = model_name
        self.slots = slots
        self.ctx_per_slot = ctx_per_slot
        self.offload = offload or Offload()
        self.n_threads = n_threads or os.cpu_count() or 1
        self.kv_unified = kv_unified
        self.suspend = suspend or SuspendPolicy()
        self.max_suspended = self.suspend.max_suspended
        self.on_gpu = False
        self.last_prompt = ""  # the exact text the model saw last (templates are tested through it)
        self._loaded: LoadedModel | None = None
        self._ctx: Any = None
        self._vocab: Any = None
        self._loop: BatchLoop | None = None
        self._template: Any = None
        self._bos_text = ""
        self._card: ModelCard | None = None

    async def load(self) -> None:
        if not os.path.isfile(self.model_path):
            raise FileNotFoundError(f"model file not found: {self.model_path}")
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        self._loaded = load_model(self.model_path, self.offload)
        self._vocab = self._loaded.vocab
        self._ctx = new_context(
            self._loaded,
            self.slots,
            self.ctx_per_slot,
            self.n_threads,
            self.offload,
            self.kv_unified,
            self.max_suspended,
        )
        self.on_gpu = self._loaded.on_gpu
        self._load_template()
        self._card = self._model_card()
        tokens = batch_tokens(self.slots)
        self._loop = BatchLoop(self._ctx, self._vocab, self.slots, tokens, self.suspend, self.kv_unified)
        self._loop.start()

    def _load_template(self) -> None:
        import llama_cpp.llama_cpp as llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self._bos_text = _token_text(self._vocab, llama.llama_vocab_bos(self._vocab))
        assert self._loaded is not None
        template = llama.llama_model_chat_template(self._loaded.model, None)
        if template:
            self._template = Jinja2ChatFormatter(
                template=template.decode(),
                eos_token=_token_text(self._vocab, llama.llama_vocab_eos(self._vocab)),
                bos_token=self._bos_text,
            )

    def _model_card(self) -> ModelCard:
        assert self._loaded is not None
        template = self._template.template if self._template is not None else ""
        stops = [self._template.eos_token] if self._template is not None else list(FALLBACK_TURN_STOPS)
        return llama_model_card(self._loaded.model, self.model_name, self.ctx_per_slot, template, stops)

    def model_card(self) -> ModelCard:
        assert self._card is not None, "engine not loaded"
        return self._card

    async def close(self) -> None:
        import llama_cpp.llama_cpp as llama

        if self._loop is not None:
            loop, self._loop = self._loop, None
            await asyncio.to_thread(loop.close)
        if self._ctx is not None:
            llama.llama_free(self._ctx)
            self._ctx = None
        if self._loaded is not None:
            self._loaded.free()
            self._loaded = self._vocab = None

    def cells_in_use(self) -> dict[int, int]:
        """KV cells held per sequence id (empty when nothing runs): what a cancel must give back."""
        assert self._loop is not None, "engine not loaded"
        return self._loop.cells_in_use()

    def format_prompt(self, request: GenerateRequest) -> tuple[str, list[str]]:
        """The text the model sees, and extra stop strings the format implies."""
        if request.prompt is not None:
            return request.prompt, []
        messages = [{"role": m.role, "content": m.content} for m in request.messages or []]
        if self._template is not None:
            try:
                formatted = self._template(messages=messages)
            except (TemplateError, ValueError) as exc:  # raise_exception() in a template raises ValueError
                raise EngineInputError(f"the model's chat template refused the messages: {exc}") from exc
            stops = formatted.stop or []
            return formatted.prompt, [stops] if isinstance(stops, str) else list(stops)
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        return "\n".join(lines) + "\nAssistant:", list(FALLBACK_TURN_STOPS)

    def tokenize(self, text: str) -> list[int]:
        """Special tokens in the text are parsed; BOS is added unless the text (a template) starts with it."""
        import llama_cpp.llama_cpp as llama

        assert self._loaded is not None, "engine not loaded"
        data = text.encode()
        add_bos = not (self._bos_text and text.startswith(self._bos_text))
        capacity = len(data) + 2
        tokens = (llama.llama_token * capacity)()
        n = llama.llama_tokenize(self._vocab, data, len(data), tokens, capacity, add_bos, True)
        if n < 0:
            raise EngineInputError(f"prompt could not be tokenized ({n})")
        return list(tokens[:n])

    async def generate(
        self, request: GenerateRequest, stop: StopSignal, continuation: Continuation | None = None
    ) -> AsyncIterator[EngineEvent]:
        assert self._loop is not None, "engine not loaded"
        prompt, format_stops = self.format_prompt(request)
        self.last_prompt = prompt
        prompt_tokens = await asyncio.to_thread(self.tokenize, prompt)  # long prompts: not on the loop
        max_tokens = self.answer_budget(len(prompt_tokens), request.max_tokens)
        earlier = list(continuation.tokens) if continuation is not None else []
        if len(earlier) >= max_tokens:  # the earlier attempt had produced it all
            yield Finished("length", prompt_tokens=len(prompt_tokens), completion_tokens=len(earlier))
            return
        sampler = await asyncio.to_thread(make_sampler, request, self._vocab, self.ctx_per_slot)  # grammars parse
        events = SequenceEvents(asyncio.get_running_loop())
        top_logprobs = request.top_logprobs if request.logprobs else None
        if request.response_format is not None:
            format_stops = []  # the grammar ends the answer; a turn marker inside a JSON string is just text
        stops = [*request.stop, *format_stops]
        exact = request.temperature == 0  # greedy: a continued answer must be the uninterrupted one
        sequence = Sequence(
            prompt_tokens, max_tokens, sampler, stops, stop, events.emit, top_logprobs, exact, request.min_tokens
        )
        if earlier:
            sequence.continue_from(earlier, self._pieces(earlier))
        self._loop.submit(sequence)
        try:
            while (item := await events.next()) is not DONE:
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, (Piece, Finished, Suspended, Resumed))
                yield item
        finally:
            stop.stop("cancelled")  # no-op when it already finished; ends the sequence if we were abandoned
            while not events.done:  # the slot is free only once the batch loop let the sequence go
                await events.next()

    def _pieces(self, tokens: list[int]) -> list[bytes]:
        """The text of an earlier attempt's tokens; ids this vocabulary lacks are the caller's fault."""
        import llama_cpp.llama_cpp as llama

        n_vocab = llama.llama_vocab_n_tokens(self._vocab)
        if any(not 0 <= token < n_vocab for token in tokens):
            raise EngineInputError(f"the continuation holds token ids outside this model's vocabulary of {n_vocab}")
        buffer = ctypes.create_string_buffer(64)
        return [token_piece(self._vocab, token, buffer) for token in tokens]

    def answer_budget(self, n_prompt_tokens: int, max_tokens: int | None) -> int:
        """Tokens the answer may take: `max_tokens`, clipped (as llama.cpp's server does) to what the slot's
        context leaves after the prompt; all of that when no limit was given. An answer that reaches a
        clipped limit ends with `finish_reason: "length"`."""
        if n_prompt_tokens == 0:
            raise EngineInputError("the prompt is empty after tokenization")
        room = self.ctx_per_slot - n_prompt_tokens
        if room < 1:
            raise EngineInputError(
                f"the prompt ({n_prompt_tokens} tokens) leaves no room for an answer in the context of "
                f"{self.ctx_per_slot} tokens per slot"
            )
        return room if max_tokens is None else min(max_tokens, room)


class SequenceEvents:
    """The event-loop side of one sequence. Pieces that queued up while the reader was busy (publishing,
    a slow client) come out merged into one, so a lagging reader catches up instead of falling behind."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._held: object | None = None
        self.done = False

    def emit(self, item: object) -> None:
        """Called from the batch thread."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone: nobody is reading any more
            pass

    async def next(self) -> object:
        item = self._held if self._held is not None else await self._queue.get()
        self._held = None
        if isinstance(item, Piece) and not self._queue.empty():
            pieces = [item]
            while not self._queue.empty():
                following = self._queue.get_nowait()
                if not isinstance(following, Piece):
                    self._held = following
                    break
                pieces.append(following)
            item = Piece(
                "".join(p.text for p in pieces),
                tuple(lp for p in pieces for lp in p.logprobs),
                tuple(t for p in pieces for t in p.tokens),
            )
        self.done = item is DONE
        return item


def _token_text(vocab: Any, token: int) -> str:
    import llama_cpp.llama_cpp as llama

    if token < 0:
        return ""
    text = llama.llama_vocab_get_text(vocab, token)
    return text.decode(errors="replace") if text else ""
