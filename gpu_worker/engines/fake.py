"""`FakeEngine`: a deterministic stand-in model for scheduler and broker tests.

It emits exactly `max_tokens` tokens (fewer only when stopped; `NATURAL_TOKENS` and "stop" when no
limit is given) at `tokens_per_s` per sequence (0 = as fast as possible). Asked for structured output, it
answers a JSON document valid for the schema (`fake_json`); asked for logprobs, a uniform model's.
Text depends only on the prompt and the token index, so two runs of one request give the same
answer, which is what duplicate- and redelivery-tests compare. `crash_on` makes it a model with a
poison prompt: a prompt that contains it kills the whole process at once, as a segfault would. It
suspends between tokens (`max_suspended` at once, its "cells" always kept) and continues an earlier
attempt from its token count, so broker tests of preemption and continuation run fast.
"""

from __future__ import annotations

import asyncio
import math
import os
import zlib
from collections.abc import AsyncIterator

from gpu_worker.engines.fake_json import example_document
from gpu_worker.engines.protocol import Continuation, EngineEvent, Finished, Piece, Resumed, StopSignal, Suspended
from schemas.messages import GenerateRequest, TokenLogprob, TopLogprob
from schemas.model_cards import ModelCard

CRASH_EXIT_CODE = 70
NATURAL_TOKENS = 16  # answer length when no max_tokens is given: then the fake model "stops" by itself
FAKE_CONTEXT = 2048  # the context its model card reports
_WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")


_UNIFORM_LOGPROB = -math.log(len(_WORDS))


def prompt_text(request: GenerateRequest) -> str:
    if request.prompt is not None:
        return request.prompt
    return "\n".join(f"{m.role}: {m.content}" for m in request.messages or [])


class FakeEngine:
    on_gpu = False
    continues = True

    def __init__(
        self,
        model_name: str = "fake",
        slots: int = 1,
        tokens_per_s: float = 0.0,
        crash_on: str = "",
        max_suspended: int = 0,
    ) -> None:
        self.model_name = model_name
        self.max_suspended = max_suspended
        self.crash_on = crash_on
        self.slots = slots
        self.tokens_per_s = tokens_per_s
        self.generations = 0  # how many generations started: lets tests prove "ran once"
        self.last_request: GenerateRequest | None = None  # what reached the engine, every field

    async def load(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def model_card(self) -> ModelCard:
        """A small synthetic card, shaped like a GGUF model's."""
        metadata: dict[str, str | int | float | bool] = {
            "general.architecture": "fake",
            "general.name": self.model_name,
            "general.parameter_count": len(_WORDS),
            "fake.context_length": FAKE_CONTEXT,
        }
        return ModelCard(
            model=self.model_name,
            format="gguf",
            family="fake",
            parameter_count=len(_WORDS),
            quantization="F32",
            context_per_slot=FAKE_CONTEXT,
            metadata=metadata,
        )

    async def generate(
        self, request: GenerateRequest, stop: StopSignal, continuation: Continuation | None = None
    ) -> AsyncIterator[EngineEvent]:
        self.generations += 1
        self.last_request = request
        text = prompt_text(request)
        if self.crash_on and self.crash_on in text:
            os._exit(CRASH_EXIT_CODE)  # no reply, no cleanup: the broker only sees the heartbeats stop
        words = _answer_words(request, zlib.crc32(text.encode()))
        delay_s = 1.0 / self.tokens_per_s if self.tokens_per_s > 0 else 0.0
        produced = len(continuation.tokens) if continuation is not None else 0
        limit = request.max_tokens if request.max_tokens is not None else len(words)
        for index in range(produced, min(limit, len(words))):
            if stop.suspend_wanted and stop.reason is None:
                yield Suspended()
                await _resumed(stop)
                if stop.reason is None:
                    yield Resumed("kept")
            if stop.reason is not None:
                break
            if delay_s:
                await asyncio.sleep(delay_s)
            elif index % 64 == 63:
                await asyncio.sleep(0)  # stay fair to the event loop on long zero-time answers
            logprobs = (_token_logprob(words[index], request),) if request.logprobs else ()
            yield Piece(words[index], logprobs, (index,))  # its "token id": its place in the answer
            produced += 1
        ended_by_itself = request.max_tokens is None or request.response_format is not None
        reason = stop.reason or ("stop" if produced == len(words) and ended_by_itself else "length")
        yield Finished(reason, prompt_tokens=len(text.split()), completion_tokens=produced)


async def _resumed(stop: StopSignal) -> None:
    """Wait until the signal is resumed or stopped (its waker may be called from any thread)."""
    loop = asyncio.get_running_loop()
    woken = asyncio.Event()
    stop.waker = lambda: loop.call_soon_threadsafe(woken.set)
    while stop.suspend_wanted and stop.reason is None:
        await woken.wait()
        woken.clear()
    stop.waker = None


def _answer_words(request: GenerateRequest, seed: int) -> list[str]:
    """The whole answer as tokens: JSON when structured output is asked for, else words from the prompt's
    seed, `max_tokens` of them (or `NATURAL_TOKENS`, where the model "stops", when no limit is given)."""
    if request.response_format is not None:
        document = example_document(request.response_format.json_schema)
        return [document[i : i + 4] for i in range(0, len(document), 4)]
    count = request.max_tokens if request.max_tokens is not None else NATURAL_TOKENS
    return [_WORDS[(seed + index) % len(_WORDS)] + " " for index in range(count)]


def _token_logprob(token: str, request: GenerateRequest) -> TokenLogprob:
    """A uniform model over its ten words: every token has probability 1/10."""
    top = [TopLogprob(w + " ", _UNIFORM_LOGPROB) for w in _WORDS[: request.top_logprobs]]
    return TokenLogprob(token, _UNIFORM_LOGPROB, top)
