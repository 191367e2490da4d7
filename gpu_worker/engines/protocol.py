"""The `Engine` protocol every model backend implements, and the events a generation yields.

A generation is an async iterator of `Piece`s (text as it is produced) closed by exactly one `Finished`
(reason and token counts). Engines poll a `StopSignal` between tokens, so a deadline or a cancel stops a
generation within one token and it still ends with a `Finished` carrying what was produced.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from schemas.messages import FinishReason, GenerateRequest, TokenLogprob
from schemas.model_cards import ModelCard


@dataclass(frozen=True)
class Piece:
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()  # the tokens sampled since the last piece, when asked for


@dataclass(frozen=True)
class Finished:
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


EngineEvent = Piece | Finished


class EngineInputError(ValueError):
    """The request cannot run on this engine (prompt longer than the context, ...): the client's fault."""


class StopSignal:
    """Set once, from the event loop or a timer; read by the engine between tokens (any thread)."""

    def __init__(self) -> None:
        self.reason: FinishReason | None = None

    def stop(self, reason: FinishReason) -> None:
        if self.reason is None:
            self.reason = reason


class Engine(Protocol):
    model_name: str
    slots: int
    on_gpu: bool

    async def load(self) -> None: ...

    def model_card(self) -> ModelCard:
        """What `/api/show` tells about the model; valid once `load` returned."""
        ...

    def generate(self, request: GenerateRequest, stop: StopSignal) -> AsyncIterator[EngineEvent]: ...

    async def close(self) -> None: ...
