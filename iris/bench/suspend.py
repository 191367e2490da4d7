"""`iris bench suspend`: what suspending and resuming a sequence costs on the llama.cpp engine, each way.

For each context length (prompt tokens) and each mode, one sequence prefills its prompt, generates a few
tokens, is suspended and resumed at once; measured: suspend (the ask → `Suspended`: the sequence left the
batch; for `restored` and `reprefilled` its cells were also evicted then), resume (the ask → its next
token: `kept` costs one decode step, `restored` writes the saved state back first, `reprefilled` prefills
prompt + answer again), the host bytes a saved state takes, and one plain decode step for scale. The answer
is checked token-identical to an uninterrupted run (temperature 0). Default model: the F16 tiny
Mistral-shaped GGUF (`iris bench make-model --shape tiny`), written to a temporary file; `--model` takes
any GGUF (on a GPU machine: the Mistral-7B-shaped one with `--n-gpu-layers -1`). Prints and saves JSON.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from gpu_worker.engines.llama.engine import LlamaCppEngine
from gpu_worker.engines.llama.offload import Offload
from gpu_worker.engines.llama.parking import SuspendPolicy
from gpu_worker.engines.protocol import Finished, Piece, Resumed, StopSignal, Suspended
from schemas.messages import GenerateRequest

MODES = {
    "kept": SuspendPolicy(max_suspended=1),
    "restored": SuspendPolicy(max_suspended=1, keep_cells=False),
    "reprefilled": SuspendPolicy(max_suspended=1, keep_cells=False, host_bytes=0),
}
ANSWER_TOKENS = 32
SUSPEND_AFTER = 1


def _prompt(engine: LlamaCppEngine, n_tokens: int) -> str:
    words, text = "ships lighthouses harbours tides".split(), ""
    while len(engine.tokenize(text)) < n_tokens:
        text += " ".join(words) + " "
    return text


def _request(engine: LlamaCppEngine, prompt: str) -> GenerateRequest:
    """Greedy, and the end-of-generation token banned: a random-weight model would often stop at once."""
    import llama_cpp.llama_cpp as llama

    eos = llama.llama_vocab_eos(llama.llama_model_get_vocab(engine._loaded.model))  # noqa: SLF001
    return GenerateRequest(prompt=prompt, max_tokens=ANSWER_TOKENS, temperature=0, logit_bias={int(eos): -100.0})


async def _measure(engine: LlamaCppEngine, prompt: str) -> dict[str, Any]:
    request = _request(engine, prompt)
    stop, tokens, times = StopSignal(), [], {}
    piece_times: list[float] = []
    mode = ""
    async for event in engine.generate(request, stop):
        now = time.perf_counter()
        if isinstance(event, Piece):
            tokens.extend(event.tokens)
            piece_times.append(now)
            if "resume_asked" in times and "resumed_token" not in times:
                times["resumed_token"] = now
            if len(tokens) >= SUSPEND_AFTER and "suspend_asked" not in times:
                times["suspend_asked"] = now
                stop.suspend()
        elif isinstance(event, Suspended):
            times["suspended"] = now
            times["resume_asked"] = time.perf_counter()
            stop.resume()
        elif isinstance(event, Resumed):
            mode = event.mode
        elif isinstance(event, Finished):
            pass
    steps = [b - a for a, b in zip(piece_times, piece_times[1:], strict=False)]
    if "resumed_token" not in times:
        raise RuntimeError("the answer ended before it could be suspended: raise ANSWER_TOKENS")
    return {
        "mode": mode,
        "tokens": tokens,
        "suspend_ms": round((times["suspended"] - times["suspend_asked"]) * 1000, 3),
        "resume_to_token_ms": round((times["resumed_token"] - times["resume_asked"]) * 1000, 3),
        "decode_step_ms": round(sorted(steps)[len(steps) // 2] * 1000, 3) if steps else None,
    }


async def _uninterrupted(engine: LlamaCppEngine, prompt: str) -> list[int]:
    request = _request(engine, prompt)
    return [t async for e in engine.generate(request, StopSignal()) if isinstance(e, Piece) for t in e.tokens]


def _state_bytes(engine: LlamaCppEngine) -> int:
    loop = engine._loop  # noqa: SLF001 - the bench reads the parking's own tally
    return loop.parking.last_saved_bytes if loop is not None else 0


async def run_suspend_bench(model: str | None, contexts: list[int], n_gpu_layers: int, out: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="iris-suspend-") as tmp:
        if model is None:
            from iris.bench.random_gguf import TINY, write_llama_gguf

            model = str(write_llama_gguf(Path(tmp) / "tiny.gguf", TINY))
        rows = []
        for mode, policy in MODES.items():
            ctx = max(contexts) + 2 * ANSWER_TOKENS + 64
            offload = Offload(n_gpu_layers=n_gpu_layers)
            engine = LlamaCppEngine(model, "bench", slots=1, ctx_per_slot=ctx, offload=offload, suspend=policy)
            await engine.load()
            try:
                for n_tokens in contexts:
                    prompt = _prompt(engine, n_tokens)
                    reference = await _uninterrupted(engine, prompt)
                    measured = await _measure(engine, prompt)
                    row = {"context_tokens": n_tokens, "asked": mode, **measured}
                    row["identical"] = row.pop("tokens") == reference
                    row["host_state_bytes"] = _state_bytes(engine)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            finally:
                await engine.close()
    report = {"model": model, "n_gpu_layers": n_gpu_layers, "answer_tokens": ANSWER_TOKENS, "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return report


def main(model: str | None, contexts: list[int], n_gpu_layers: int, out: Path) -> None:
    asyncio.run(run_suspend_bench(model, contexts, n_gpu_layers, out))
