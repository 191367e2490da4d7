"""Continuous batching on the real embedded model: batched answers match unbatched ones, sequences join
between steps, a cancelled sequence gives its KV cells back at once, samplers are per sequence."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gpu_worker.embedded_model import EMBEDDED_MODEL_NAME
from gpu_worker.engines.llama.engine import LlamaCppEngine
from gpu_worker.engines.protocol import EngineInputError, Finished, Piece, StopSignal
from schemas.messages import GenerateRequest

pytestmark = pytest.mark.slow  # the real model (or a cluster) in real processes

PROMPTS = [
    "Why is the sky blue?",
    "Name three uses of copper.",
    "What is a prime number?",
    "Summarize the water cycle in one sentence.",
    "Give a synonym for quick.",
    "Write a haiku about rain.",
    "What is the capital of France?",
    "Explain gravity to a child.",
]
SUBJECTS = (
    "sky copper primes rain France gravity lighthouses bread the-moon volcanoes deserts bees oceans trains music "
    "chess winter rivers clocks glass salt paper wolves tea"
).split()


async def load(model: str, slots: int, ctx_per_slot: int = 512) -> LlamaCppEngine:
    engine = LlamaCppEngine(model, EMBEDDED_MODEL_NAME, slots=slots, ctx_per_slot=ctx_per_slot, n_threads=2)
    await engine.load()
    return engine


async def answer(
    engine: LlamaCppEngine, request: GenerateRequest, started: asyncio.Event | None = None
) -> tuple[str, Finished]:
    text: list[str] = []
    finished = None
    async for event in engine.generate(request, StopSignal()):
        if isinstance(event, Piece):
            text.append(event.text)
            if started is not None:
                started.set()
        else:
            finished = event
    assert finished is not None
    return "".join(text), finished


async def staggered(engine: LlamaCppEngine, requests: list[GenerateRequest]) -> list[tuple[str, Finished]]:
    """Each request joins once the one before it is generating: sequences join a running batch."""
    tasks = []
    for request in requests:
        started = asyncio.Event()
        tasks.append(asyncio.create_task(answer(engine, request, started)))
        await asyncio.wait([asyncio.create_task(started.wait()), tasks[-1]], return_when=asyncio.FIRST_COMPLETED)
    return await asyncio.gather(*tasks)


@pytest.fixture
async def single(embedded_model: str) -> AsyncIterator[LlamaCppEngine]:
    engine = await load(embedded_model, slots=1)
    yield engine
    await engine.close()


@pytest.fixture
async def batched(embedded_model: str) -> AsyncIterator[LlamaCppEngine]:
    engine = await load(embedded_model, slots=4)
    yield engine
    await engine.close()


async def test_one_at_a_time_through_the_batched_context_is_exactly_unbatched(
    single: LlamaCppEngine, batched: LlamaCppEngine
) -> None:
    """Same kernels, so bit-identical: sequence ids are reused and a leftover cell would change answers."""
    requests = [GenerateRequest(prompt=p, max_tokens=12, temperature=0) for p in PROMPTS]
    for request in requests:
        assert await answer(batched, request) == await answer(single, request)
    assert batched.cells_in_use() == {}


async def test_batched_greedy_output_matches_unbatched_exactly(tiny_mistral_model: str) -> None:
    """F16 weights: batched kernels give the unbatched result, so every answer must match to the token."""
    long_prompt = " ".join(f"{p} {i}" for i in range(12) for p in PROMPTS)  # > one batch: prefilled in chunks
    prompts = [f"{p} {i}" for i in range(2) for p in PROMPTS] + [long_prompt]
    alone, together = await greedy_both_ways(tiny_mistral_model, prompts, 16, ctx_per_slot=4096)
    assert alone[-1][1].prompt_tokens > 2 * 512
    assert together == alone


async def test_batched_greedy_agreement_on_embedded_model(embedded_model: str) -> None:
    """Quantized Gemma: llama.cpp's CPU kernels round differently with the rows in a batch (up to ~1 logit
    here), and this small model has many near ties, so some answers fork. The rate is reported; the bound
    catches mechanics bugs (leaked cells, wrong positions), which break nearly every answer."""
    prompts = [f"Tell me one fact about {subject}." for subject in SUBJECTS]
    alone, together = await greedy_both_ways(embedded_model, prompts, 8)
    agreeing = sum(a == b for a, b in zip(alone, together, strict=True))
    print(f"\nbatched vs unbatched, first 8 tokens agree for {agreeing}/{len(prompts)} prompts")
    assert agreeing / len(prompts) >= 0.5
    assert all(f.completion_tokens == 8 or f.finish_reason == "stop" for _, f in together)


async def greedy_both_ways(
    model: str, prompts: list[str], max_tokens: int, ctx_per_slot: int = 512
) -> tuple[list[Any], list[Any]]:
    requests = [GenerateRequest(prompt=p, max_tokens=max_tokens, temperature=0) for p in prompts]
    single, batched = await load(model, 1, ctx_per_slot), await load(model, 4, ctx_per_slot)
    try:
        alone = [await answer(single, r) for r in requests]
        together = await staggered(batched, requests)  # more requests than slots: later ones wait for an id
        assert batched.cells_in_use() == {}
    finally:
        await single.close()
        await batched.close()
    return alone, together


async def test_cancel_frees_the_sequence_cells_and_the_others_go_on(batched: LlamaCppEngine) -> None:
    other = asyncio.create_task(answer(batched, GenerateRequest(prompt=PROMPTS[0], max_tokens=40, temperature=0)))
    stop = StopSignal()
    events = batched.generate(GenerateRequest(prompt=PROMPTS[1], max_tokens=400, temperature=0), stop)
    pieces = 0
    async for event in events:
        if isinstance(event, Piece):
            pieces += 1
            if pieces == 3:
                assert len(batched.cells_in_use()) == 2  # both sequences hold cells while running
                stop.stop("cancelled")
        else:
            assert event.finish_reason == "cancelled"
            assert event.completion_tokens < 50  # stopped at the next step, not run to max_tokens
            assert len(batched.cells_in_use()) <= 1  # its cells were gone before its Finished was emitted
    text, finished = await other
    assert finished.finish_reason in ("length", "stop") and text
    assert batched.cells_in_use() == {}


async def test_abandoned_generation_frees_its_cells(batched: LlamaCppEngine) -> None:
    events = batched.generate(GenerateRequest(prompt=PROMPTS[2], max_tokens=400), StopSignal())
    async for event in events:
        if isinstance(event, Piece):
            break
    await events.aclose()  # type: ignore[attr-defined]
    assert batched.cells_in_use() == {}


async def test_stop_string_across_tokens_and_exact_counts(single: LlamaCppEngine, batched: LlamaCppEngine) -> None:
    request = GenerateRequest(prompt=PROMPTS[3], max_tokens=16, temperature=0)
    text, finished = await answer(single, request)
    assert finished.finish_reason == "length" and finished.completion_tokens == 16
    stop_text = text[len(text) // 2 : len(text) // 2 + 5]
    cut, cut_finished = await answer(
        batched, GenerateRequest(prompt=PROMPTS[3], max_tokens=16, temperature=0, stop=[stop_text])
    )
    assert cut == text[: text.index(stop_text)]
    assert cut_finished.finish_reason == "stop" and cut_finished.completion_tokens < 16


async def test_seeded_sampling_is_per_sequence(tiny_mistral_model: str) -> None:
    """Each sequence draws from its own seeded sampler: batched with others it samples what it samples alone
    (F16 weights, so the batched logits are the unbatched ones)."""
    request = GenerateRequest(prompt=PROMPTS[5], max_tokens=16, temperature=1.0, top_p=0.95, seed=7)
    other_seed = GenerateRequest(prompt=PROMPTS[5], max_tokens=16, temperature=1.0, top_p=0.95, seed=8)
    single, batched = await load(tiny_mistral_model, 1), await load(tiny_mistral_model, 4)
    try:
        alone = await answer(single, request)
        first, second, third = await asyncio.gather(
            answer(batched, request), answer(batched, request), answer(batched, other_seed)
        )
    finally:
        await single.close()
        await batched.close()
    assert first == second == alone
    assert third[0] != first[0]


async def test_prompt_longer_than_a_slot_is_refused(batched: LlamaCppEngine) -> None:
    with pytest.raises(EngineInputError, match="leaves no room for an answer in the context of 512 tokens per slot"):
        await answer(batched, GenerateRequest(prompt="word " * 600, max_tokens=8))
