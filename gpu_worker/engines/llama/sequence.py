"""One sequence of the batched llama.cpp context: what it feeds each step, and what it makes of a token.

A sequence first feeds its prompt (in chunks, sharing decode steps with running sequences), then one
token per step: the one it sampled last. Each sampled token is checked in this order: end-of-generation
token, text (UTF-8 split across tokens is held back, stop strings split across tokens are recognised),
`max_tokens` (clipped by the engine to what the slot's context leaves). Below `min_tokens` no stop string
counts and the batch masks end-of-generation tokens out of the draw. Token counts are exact: an
end-of-generation token is not counted, a token whose text completes a stop string is. Logprobs, when
asked for, travel with the next piece of text after their token (one per counted token, held-back
tokens included), and so do the token ids. Everything a sequence emits goes through `emit`, which the
engine wires to its request's event queue on the event loop.

Its KV cells always hold `feed[:n_cached]`: the prompt, then (once it generates) every sampled token but
the last, which is fed on the next step. So a sequence whose cells were dropped (suspended without room)
or that continues another attempt's answer prefills `feed` again and goes on where it was. Exactly
where, for a greedy answer (`exact`): a batch of many tokens is computed by other kernels than one token
at a time and its cells differ in the last bits, enough to flip a near-tie argmax later (measured: 3 of
29 continuations of the random-weight test model and 1 of 42 of Gemma 3 270M parted from the
uninterrupted answer). So an exact sequence prefills its prompt in chunks as before, then its answer
tokens one a step as they were sampled: the cells come out bit for bit, at the cost of a decode step per
token (sampling-free), paid only when the cells were lost.
"""

from __future__ import annotations

import codecs
import ctypes
from collections.abc import Callable
from typing import Any

from gpu_worker.engines.protocol import Finished, Piece, StopSignal
from schemas.messages import FinishReason, TokenLogprob

DONE = object()  # the last item a sequence emits
Emit = Callable[[object], None]


class Sequence:
    def __init__(
        self,
        prompt_tokens: list[int],
        max_tokens: int,
        sampler: Any,
        stops: list[str],
        stop: StopSignal,
        emit: Emit,
        top_logprobs: int | None = None,
        exact: bool = False,
        min_tokens: int = 0,
    ) -> None:
        self.prompt_tokens = prompt_tokens
        self.min_tokens = min_tokens
        self.exact = exact  # prefill answer tokens one a step, as they were first computed (see `next_tokens`)
        self.max_tokens = max_tokens  # already clipped to what the slot's context leaves
        self.stop = stop
        self.emit = emit
        self.sampler = sampler
        self.top_logprobs = top_logprobs  # None: no logprobs; else how many alternatives per token
        self._logprobs: list[TokenLogprob] = []  # sampled, not yet sent with a piece
        self.seq_id = -1  # set when it joins the context
        self.n_cached = 0  # tokens of this sequence in the KV cache = the next position
        self.feed = prompt_tokens  # what the cache must hold before the last sampled token is fed
        self.generated: list[int] = []  # every counted token sampled so far
        self._piece_tokens: list[int] = []  # counted, not yet sent with a piece
        self.last_token = -1
        self.completion_tokens = 0
        self.saved_state: Any = None  # suspended to host memory: its KV state (llama_state_seq_get_data)
        self._text = StopTextBuffer(stops)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    @property
    def may_end(self) -> bool:
        """Whether the answer may end now, at an end-of-generation token or a stop string (`min_tokens` reached)."""
        return self.completion_tokens >= self.min_tokens

    @property
    def prefilling(self) -> bool:
        return self.n_cached < len(self.feed)

    def next_tokens(self, budget: int) -> tuple[list[int], bool]:
        """Tokens to feed this step (at most `budget`) and whether the last one needs logits."""
        if not self.prefilling:
            return [self.last_token], True
        end = min(len(self.feed), self.n_cached + budget)
        if self.exact:  # the prompt in chunks, then each answer token alone, as when it was sampled
            end = min(end, max(len(self.prompt_tokens), self.n_cached + 1))
        return self.feed[self.n_cached : end], end == len(self.feed) and not self.generated

    def cells_dropped(self) -> None:
        """Its KV cells are gone: prefill prompt + answer so far (but the last token) again."""
        self.n_cached = 0
        self.feed = self.prompt_tokens + self.generated[:-1]

    def continue_from(self, tokens: list[int], pieces: list[bytes]) -> None:
        """Take in an earlier attempt's tokens (their `pieces` of text) as if sampled here, emitting nothing:
        the text buffers hold back what they held back then, and the sampler has seen them."""
        for token, piece in zip(tokens, pieces, strict=True):
            self.completion_tokens += 1
            self.generated.append(token)
            self._text.feed(self._decoder.decode(piece), self.may_end)
            if self.sampler is not None:
                self.sampler.accept(token)
        self.last_token = tokens[-1]
        self.feed = self.prompt_tokens + self.generated[:-1]

    def accept(
        self, token: int, is_eog: bool, piece: bytes, logprob: TokenLogprob | None = None
    ) -> FinishReason | None:
        """Take a sampled token; a finish reason when the sequence is complete."""
        if is_eog:
            return "stop"
        self.completion_tokens += 1
        self.last_token = token
        self.generated.append(token)
        self._piece_tokens.append(token)
        if logprob is not None:
            self._logprobs.append(logprob)
        ready, hit_stop = self._text.feed(self._decoder.decode(piece), self.may_end)
        if ready:
            self._emit_piece(ready)
        if hit_stop:
            return "stop"
        if self.completion_tokens >= self.max_tokens:
            return "length"
        return None

    def _emit_piece(self, text: str) -> None:
        self.emit(Piece(text, tuple(self._logprobs), tuple(self._piece_tokens)))
        self._logprobs = []
        self._piece_tokens = []

    def finish(self, reason: FinishReason) -> None:
        tail = self._text.flush(self._decoder.decode(b"", final=True))
        if tail or self._logprobs:  # tokens held back (a stop string) still have their logprobs
            self._emit_piece(tail)
        self.emit(Finished(reason, prompt_tokens=len(self.prompt_tokens), completion_tokens=self.completion_tokens))
        self.emit(DONE)

    def fail(self, error: BaseException) -> None:
        self.emit(error)
        self.emit(DONE)

    def free_sampler(self) -> None:
        if self.sampler is not None:
            self.sampler.free()
            self.sampler = None


def token_piece(vocab: Any, token: int, buffer: ctypes.Array[ctypes.c_char]) -> bytes:
    """The bytes of one token (special tokens render empty), growing past `buffer` when needed."""
    import llama_cpp.llama_cpp as llama

    n = llama.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, False)
    if n < 0:
        bigger = ctypes.create_string_buffer(-n)
        n = llama.llama_token_to_piece(vocab, token, bigger, len(bigger), 0, False)
        return bigger.raw[:n]
    return buffer.raw[:n]


class StopTextBuffer:
    """Holds back just enough text to recognise a stop string split across tokens."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.pending = ""
        self.stopped = False

    def feed(self, new_text: str, armed: bool = True) -> tuple[str, bool]:
        """The text ready to send, and whether a stop string ended the answer; not `armed` (below
        `min_tokens`), no stop counts and nothing is held back."""
        self.pending += new_text
        if not armed:
            ready, self.pending = self.pending, ""
            return ready, False
        found = [at for at in (self.pending.find(stop_text) for stop_text in self.stops) if at >= 0]
        if found:  # the earliest stop wins, wherever it is in the list
            at = min(found)
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
