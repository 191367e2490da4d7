"""`FakeEngine`: a deterministic stand-in model for scheduler and broker tests.

It emits exactly `max_tokens` tokens (fewer only when stopped) at `tokens_per_s` per sequence
(0 = as fast as possible). Text depends only on the prompt and the token index, so two runs of one
request give the same answer, which is what duplicate- and redelivery-tests compare. `crash_on` makes it a
model with a poison prompt: a prompt that contains it kills the whole process at once, as a segfault would.
"""

from __future__ import annotations

import asyncio
import os
import zlib
from collections.abc import AsyncIterator

from gpu_worker.engine import EngineEvent, Finished, Piece, StopSignal
from schemas.messages import GenerateRequest

CRASH_EXIT_CODE = 70
_WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")


def prompt_text(request: GenerateRequest) -> str:
    if request.prompt is not None:
        return request.prompt
    return "\n".join(f"{m.role}: {m.content}" for m in request.messages or [])


class FakeEngine:
    on_gpu = False

    def __init__(self, model_name: str = "fake", slots: int = 1, tokens_per_s: float = 0.0, crash_on: str = "") -> None:
        self.model_name = model_name
        self.crash_on = crash_on
        self.slots = slots
        self.tokens_per_s = tokens_per_s
        self.generations = 0  # how many generations started: lets tests prove "ran once"

    async def load(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def generate(self, request: GenerateRequest, stop: StopSignal) -> AsyncIterator[EngineEvent]:
        self.generations += 1
        text = prompt_text(request)
        if self.crash_on and self.crash_on in text:
            os._exit(CRASH_EXIT_CODE)  # no reply, no cleanup: the broker only sees the heartbeats stop
        seed = zlib.crc32(text.encode())
        delay_s = 1.0 / self.tokens_per_s if self.tokens_per_s > 0 else 0.0
        produced = 0
        for index in range(request.max_tokens):
            if stop.reason is not None:
                break
            if delay_s:
                await asyncio.sleep(delay_s)
            elif index % 64 == 63:
                await asyncio.sleep(0)  # stay fair to the event loop on long zero-time answers
            yield Piece(_WORDS[(seed + index) % len(_WORDS)] + " ")
            produced += 1
        reason = stop.reason or "length"
        yield Finished(reason, prompt_tokens=len(text.split()), completion_tokens=produced)
