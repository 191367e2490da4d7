"""The `Engine` protocol every model backend implements, and the events a generation yields.

A generation is an async iterator of `Piece`s (text as it is produced) closed by exactly one `Finished`
(reason and token counts). Engines poll a `StopSignal` between tokens, so a deadline or a cancel stops a
generation within one token and it still ends with a `Finished` carrying what was produced.

An engine with `max_suspended > 0` can also suspend a generation (`StopSignal.suspend`): it yields
`Suspended` once the sequence has left the decode batch (its slot is free), nothing while suspended, and
`Resumed` (how its work was kept) once `StopSignal.resume` put it back. A stop while suspended ends it as
usual. A generation may start from a `Continuation`: the tokens an earlier attempt produced, which the
engine takes in again without emitting their text, so the answer goes on where that attempt stopped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from schemas.messages import FinishReason, GenerateRequest, TokenLogprob
from schemas.model_cards import ModelCard


@dataclass(frozen=True)
class Piece:
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()  # the tokens sampled since the last piece, when asked for
    tokens: tuple[int, ...] = ()  # ids of the tokens counted since the last piece (what a continuation needs)


@dataclass(frozen=True)
class Finished:
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


ResumeMode = Literal["kept", "restored", "reprefilled"]
RESUME_MODES: tuple[ResumeMode, ...] = ("kept", "restored", "reprefilled")


@dataclass(frozen=True)
class Suspended:
    """The sequence left the decode batch; its slot is free until it is resumed."""


@dataclass(frozen=True)
class Resumed:
    """The sequence is decoding again. `mode`: its KV cells had stayed in the cache (kept), its state came
    back from host memory (restored), or prompt + answer so far were prefilled again (reprefilled)."""

    mode: ResumeMode


EngineEvent = Piece | Finished | Suspended | Resumed


@dataclass(frozen=True)
class Continuation:
    """What an earlier attempt of the same request produced, for this engine's model: the token ids in
    order. The engine feeds prompt + these and samples the next token as the earlier attempt would have."""

    tokens: tuple[int, ...]


class EngineInputError(ValueError):
    """The request cannot run on this engine (prompt longer than the context, ...): the client's fault."""


class StopSignal:
    """Set once, from the event loop or a timer; read by the engine between tokens (any thread). It also
    carries the suspend wish: `suspend` is read between tokens like a stop; `resume`, and a stop of a
    suspended sequence, call the waker the engine registered for it."""

    def __init__(self) -> None:
        self.reason: FinishReason | None = None
        self.suspend_wanted = False
        self.waker: Callable[[], None] | None = None

    def stop(self, reason: FinishReason) -> None:
        if self.reason is None:
            self.reason = reason
            self._wake()

    def suspend(self) -> None:
        if self.reason is None:
            self.suspend_wanted = True

    def resume(self) -> None:
        self.suspend_wanted = False
        self._wake()

    def _wake(self) -> None:
        if self.waker is not None:
            self.waker()


class Engine(Protocol):
    model_name: str
    slots: int
    max_suspended: int  # generations it can hold suspended at once; 0: it cannot suspend
    continues: bool  # whether `generate` takes a `Continuation`
    on_gpu: bool

    async def load(self) -> None: ...

    def model_card(self) -> ModelCard:
        """What `/api/show` tells about the model; valid once `load` returned."""
        ...

    def generate(
        self, request: GenerateRequest, stop: StopSignal, continuation: Continuation | None = None
    ) -> AsyncIterator[EngineEvent]: ...

    async def close(self) -> None: ...
