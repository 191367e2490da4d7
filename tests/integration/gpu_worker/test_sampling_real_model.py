"""Each sampling option changes what the real embedded model does (so dropping one on the way fails its
test), and logprobs are the model's: one per token, at most 0, the sampled one first when greedy."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from typing import Any

import pytest

from gpu_worker.embedded_model import EMBEDDED_MODEL_NAME
from gpu_worker.engines.llama.engine import LlamaCppEngine
from gpu_worker.engines.protocol import Finished, Piece, StopSignal
from schemas.messages import ChatMessage, GenerateRequest, TokenLogprob

pytestmark = pytest.mark.slow  # the real model (or a cluster) in real processes

PROMPT = "The sky is blue because"
REPEATING = "one two one two one two one two one two one two"
SEEDS = (1, 2, 3, 4)
CONTEXT = 64  # tokens per slot: small, so answers that run to its end stay short


@pytest.fixture(scope="module")
def engine(embedded_model: str) -> Iterator[LlamaCppEngine]:
    loaded = LlamaCppEngine(embedded_model, EMBEDDED_MODEL_NAME, slots=2, ctx_per_slot=CONTEXT, n_threads=2)
    asyncio.run(loaded.load())
    yield loaded
    asyncio.run(loaded.close())


async def answer(engine: LlamaCppEngine, **fields: Any) -> tuple[str, list[TokenLogprob], Finished]:
    fields = {"prompt": PROMPT, "max_tokens": 8, "temperature": 0.0, **fields}
    text, logprobs, finished = [], [], None
    async for event in engine.generate(GenerateRequest(**fields), StopSignal()):
        if isinstance(event, Piece):
            text.append(event.text)
            logprobs.extend(event.logprobs)
        else:
            finished = event
    assert finished is not None
    return "".join(text), logprobs, finished


async def text(engine: LlamaCppEngine, **fields: Any) -> str:
    return (await answer(engine, **fields))[0]


async def sampled(engine: LlamaCppEngine, **fields: Any) -> set[str]:
    """What four seeds draw at a high temperature."""
    return {await text(engine, temperature=1.5, seed=seed, **fields) for seed in SEEDS}


async def test_seed_repeats_and_varies(engine: LlamaCppEngine) -> None:
    assert await text(engine, temperature=1.5, seed=7) == await text(engine, temperature=1.5, seed=7)
    assert len(await sampled(engine)) > 1


@pytest.mark.parametrize("narrowing", [{"top_k": 1}, {"min_p": 1.0}, {"top_p": 0.001}])
async def test_narrowing_options_make_sampling_greedy(engine: LlamaCppEngine, narrowing: dict[str, Any]) -> None:
    assert await sampled(engine, **narrowing) == {await text(engine)}


@pytest.mark.parametrize("penalty", [{"repeat_penalty": 1.8}, {"presence_penalty": 2.0}, {"frequency_penalty": 2.0}])
async def test_penalties_change_a_repeating_answer(engine: LlamaCppEngine, penalty: dict[str, Any]) -> None:
    plain = await text(engine, prompt=REPEATING, max_tokens=12)
    assert await text(engine, prompt=REPEATING, max_tokens=12, **penalty) != plain


async def test_repeat_last_n_zero_switches_the_penalty_off(engine: LlamaCppEngine) -> None:
    plain = await text(engine, prompt=REPEATING, max_tokens=12)
    assert await text(engine, prompt=REPEATING, max_tokens=12, repeat_penalty=1.8, repeat_last_n=0) == plain


async def test_logit_bias_bans_and_forces_tokens(engine: LlamaCppEngine) -> None:
    first = engine.tokenize(await text(engine, max_tokens=1))[-1]
    banned = await text(engine, max_tokens=1, logit_bias={first: -100.0})
    assert banned and engine.tokenize(banned)[-1] != first
    forced = engine.tokenize(" banana")[-1]
    assert (await text(engine, max_tokens=3, logit_bias={forced: 100.0})).startswith(" banana")


async def test_logprobs_are_the_models(engine: LlamaCppEngine) -> None:
    text_out, logprobs, finished = await answer(engine, logprobs=True, top_logprobs=5, max_tokens=10)
    assert len(logprobs) == finished.completion_tokens
    assert "".join(lp.token for lp in logprobs).startswith(text_out)  # tokens spell the answer
    for lp in logprobs:
        assert lp.logprob <= 0 and len(lp.top) == 5
        assert lp.top[0].token == lp.token and math.isclose(lp.top[0].logprob, lp.logprob)  # greedy: the best
        assert [t.logprob for t in lp.top] == sorted((t.logprob for t in lp.top), reverse=True)
        assert sum(math.exp(t.logprob) for t in lp.top) <= 1.0 + 1e-6
    _, none, _ = await answer(engine)
    assert none == []


async def test_a_limit_past_the_context_is_clipped_to_it(engine: LlamaCppEngine) -> None:
    """A limit larger than what the slot's context leaves runs to the end of the context (as llama.cpp's
    server does) and says `length`; no limit at all does the same. The bias keeps the model from stopping."""
    forced = {engine.tokenize(" banana")[-1]: 100.0}
    _, _, clipped = await answer(engine, max_tokens=10_000, logit_bias=forced)
    assert clipped.finish_reason == "length" and clipped.prompt_tokens + clipped.completion_tokens == CONTEXT
    _, _, unlimited = await answer(engine, max_tokens=None, logit_bias=forced)
    assert unlimited == clipped


async def test_min_tokens_holds_off_the_end_token_and_stop_strings(engine: LlamaCppEngine) -> None:
    chat = {"prompt": None, "messages": [ChatMessage("user", "Say hello.")], "max_tokens": 40}
    natural = await answer(engine, **chat)
    assert natural[2].finish_reason == "stop" and natural[2].completion_tokens < 40  # the model ends by itself here
    text_, _, fixed = await answer(engine, **chat, min_tokens=40)
    assert (fixed.finish_reason, fixed.completion_tokens) == ("length", 40)
    assert text_.startswith(natural[0])  # greedy: the same answer, then on past where it ended
    import llama_cpp.llama_cpp as llama

    ending = {int(llama.llama_vocab_eos(engine._vocab)): 100.0}  # the end token drawn first, every time
    assert (await answer(engine, logit_bias=ending))[2].completion_tokens == 0
    _, _, late = await answer(engine, logit_bias=ending, min_tokens=5)
    assert (late.finish_reason, late.completion_tokens) == ("stop", 5)  # drawn as soon as it may be
    spaced, _, held = await answer(engine, stop=[" "], max_tokens=20, min_tokens=6)
    assert held.finish_reason == "stop" and 6 <= held.completion_tokens < 20  # a stop counts from token 6 on
    assert " " in spaced
