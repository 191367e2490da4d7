"""`iris bench worker`: generation throughput with 1, 2, 4, 8 concurrent sequences, Iris vs direct.

Two arms, on the same model, settings and prompts, rounds interleaved so load drift on a shared machine
hits both alike:
  * direct: llama-cpp-python in-process, the raw loop — one context with `n_seq_max = N`, all N prompts
    prefilled in one batch, then one batched `llama_decode` per step with greedy sampling, until every
    sequence has its tokens or its end-of-generation token;
  * iris: a real nats-server, broker process and one worker process with `--slots N`; N streamed requests
    sent at once through the client SDK.
Tokens/s = completion tokens / wall time from the first prompt in to the last token out (prefill
included in both arms); the direct arm also reports decode-only tokens/s. Each figure is the median of
the rounds. Prints a table, saves JSON.
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from gpu_worker.engines.llama.context import LoadedModel, batch_tokens, load_model, new_context
from gpu_worker.engines.llama.offload import Offload
from iris.bench.harness import save_report
from iris.launch.nats_server import NatsServer
from iris.launch.processes import spawn, stop_all, wait_for_model
from iris.sdk.client import Client

PROMPTS = [
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail how a steam engine works, step by step.",
    "Describe a walk through a busy market in a coastal town.",
    "Write a long letter from a sailor to his family at home.",
    "Tell the history of a small mountain village over three centuries.",
    "Describe how bread is made, from the field to the table.",
    "Write a travel diary of a week spent crossing a desert.",
    "Explain to a child how the planets move around the sun.",
]
TARGET_BATCHED = 0.90  # iris / direct with 4 sequences
TARGET_SINGLE = 0.95  # iris / direct with 1 sequence


class BenchSettings:
    def __init__(
        self, model: str, concurrency: list[int], max_tokens: int, rounds: int, threads: int, offload: Offload
    ) -> None:
        self.model, self.concurrency, self.max_tokens = model, concurrency, max_tokens
        self.rounds, self.threads, self.offload = rounds, threads, offload
        self.ctx_per_slot = 128 * (1 + (max_tokens + 64) // 128)

    def worker_args(self, slots: int) -> list[str]:
        args = ["--engine", "llama", "--model", self.model, "--model-name", f"bench-s{slots}"]
        args += ["--slots", str(slots), "--threads", str(self.threads), "--ctx-per-slot", str(self.ctx_per_slot)]
        args += ["--n-gpu-layers", str(self.offload.n_gpu_layers), "--flash-attn", self.offload.flash_attn]
        return args


def tokenize(loaded: LoadedModel, text: str) -> list[int]:
    import llama_cpp.llama_cpp as llama

    data = text.encode()
    tokens = (llama.llama_token * (len(data) + 2))()
    n = llama.llama_tokenize(loaded.vocab, data, len(data), tokens, len(data) + 2, True, True)
    return list(tokens[:n])


def direct_round(loaded: LoadedModel, ctx: Any, n_seq: int, max_tokens: int) -> dict[str, float]:
    """The raw batched loop: returns completion tokens, total seconds and decode-only seconds."""
    import llama_cpp.llama_cpp as llama

    llama.llama_memory_clear(llama.llama_get_memory(ctx), True)
    prompts = [tokenize(loaded, PROMPTS[i % len(PROMPTS)]) for i in range(n_seq)]
    greedy = llama.llama_sampler_init_greedy()
    batch = llama.llama_batch_init(batch_tokens(n_seq) + sum(len(p) for p in prompts), 0, 1)
    try:
        start = time.perf_counter()
        entries = [(t, pos, s, pos == len(p) - 1) for s, p in enumerate(prompts) for pos, t in enumerate(p)]
        _decode(ctx, batch, entries)
        logits_at = [sum(len(p) for p in prompts[: s + 1]) - 1 for s in range(n_seq)]
        prefilled = time.perf_counter()
        positions = [len(p) for p in prompts]
        produced, live = [0] * n_seq, list(range(n_seq))
        while live:
            step: list[tuple[int, int, int, bool]] = []
            for s, index in zip(live, logits_at, strict=True):
                token = llama.llama_sampler_sample(greedy, ctx, index)
                if llama.llama_vocab_is_eog(loaded.vocab, token):
                    continue
                produced[s] += 1
                if produced[s] < max_tokens:
                    step.append((token, positions[s], s, True))
                    positions[s] += 1
            live, logits_at = [e[2] for e in step], list(range(len(step)))
            if step:
                _decode(ctx, batch, step)
        end = time.perf_counter()
    finally:
        llama.llama_batch_free(batch)
        llama.llama_sampler_free(greedy)
    return {"tokens": sum(produced), "seconds": end - start, "decode_seconds": end - prefilled}


def _decode(ctx: Any, batch: Any, entries: list[tuple[int, int, int, bool]]) -> None:
    import llama_cpp.llama_cpp as llama

    for i, (token, pos, seq, logits) in enumerate(entries):
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, logits
        batch.seq_id[i][0] = seq
    batch.n_tokens = len(entries)
    status = llama.llama_decode(ctx, batch)
    if status != 0:
        raise RuntimeError(f"llama_decode returned {status}")


async def iris_round(client: Client, model: str, n_seq: int, max_tokens: int) -> dict[str, float]:
    async def one(i: int) -> int:
        generation = client.generate(PROMPTS[i % len(PROMPTS)], model=model, max_tokens=max_tokens, temperature=0)
        async for _chunk in generation:
            pass
        assert generation.result is not None
        return generation.result.usage.completion_tokens

    start = time.perf_counter()
    tokens = await asyncio.gather(*(one(i) for i in range(n_seq)))
    return {"tokens": sum(tokens), "seconds": time.perf_counter() - start}


async def bench_concurrency(
    settings: BenchSettings, loaded: LoadedModel, server: NatsServer, workdir: Path, n_seq: int
) -> dict[str, Any]:
    """One worker process with N slots and one direct context with N sequences; rounds alternate."""
    import llama_cpp.llama_cpp as llama

    ctx = new_context(loaded, n_seq, settings.ctx_per_slot, settings.threads, settings.offload, kv_unified=True)
    model = f"bench-s{n_seq}"
    worker = spawn("gpu_worker", server.url, settings.worker_args(n_seq), workdir / f"worker-s{n_seq}.log")
    direct: list[dict[str, float]] = []
    iris: list[dict[str, float]] = []
    try:
        async with await Client.connect(server.url) as client:
            await wait_for_model(client, model, [worker])
            await iris_round(client, model, n_seq, 8)  # warm-up: first decode allocates buffers
            direct_round(loaded, ctx, n_seq, 8)
            for _ in range(settings.rounds):
                direct.append(direct_round(loaded, ctx, n_seq, settings.max_tokens))
                iris.append(await iris_round(client, model, n_seq, settings.max_tokens))
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        llama.llama_free(ctx)
    return summarize(n_seq, direct, iris)


def summarize(n_seq: int, direct: list[dict[str, float]], iris: list[dict[str, float]]) -> dict[str, Any]:
    """Medians, and best rounds too: on a shared machine the best round is the least disturbed one."""

    def rates(rounds: list[dict[str, float]], key: str = "seconds") -> list[float]:
        return [r["tokens"] / r[key] for r in rounds]

    direct_tps, iris_tps = statistics.median(rates(direct)), statistics.median(rates(iris))
    return {
        "sequences": n_seq,
        "direct_tokens_per_s": round(direct_tps, 2),
        "direct_decode_only_tokens_per_s": round(statistics.median(rates(direct, "decode_seconds")), 2),
        "iris_tokens_per_s": round(iris_tps, 2),
        "iris_vs_direct": round(iris_tps / direct_tps, 3),
        "best_direct_tokens_per_s": round(max(rates(direct)), 2),
        "best_iris_tokens_per_s": round(max(rates(iris)), 2),
        "best_iris_vs_best_direct": round(max(rates(iris)) / max(rates(direct)), 3),
        "rounds": {"direct": direct, "iris": iris},
    }


def print_table(rows: list[dict[str, Any]], load_before: tuple[float, ...], load_after: tuple[float, ...]) -> None:
    print("medians of the rounds; best rounds in the last three columns")
    header = ("sequences", "direct tok/s", "(decode only)", "iris tok/s", "iris/direct", "best direct", "best iris")
    print(" ".join(f"{h:>13}" for h in header) + f" {'best ratio':>11}")
    for row in rows:
        values = (
            row["direct_tokens_per_s"],
            row["direct_decode_only_tokens_per_s"],
            row["iris_tokens_per_s"],
            row["iris_vs_direct"],
            row["best_direct_tokens_per_s"],
            row["best_iris_tokens_per_s"],
        )
        cells = [f"{v:>13.3f}" if i == 3 else f"{v:>13.1f}" for i, v in enumerate(values)]
        print(f"{row['sequences']:>13} " + " ".join(cells) + f" {row['best_iris_vs_best_direct']:>11.3f}")
    print(f"targets: iris/direct >= {TARGET_SINGLE} with 1 sequence, >= {TARGET_BATCHED} with 4")
    print(f"load average before {load_before}, after {load_after}")


async def run_worker_bench(settings: BenchSettings, out: Path) -> dict[str, Any]:
    load_before = tuple(round(x, 2) for x in os.getloadavg())
    loaded = await asyncio.to_thread(load_model, settings.model, settings.offload)
    rows = []
    with tempfile.TemporaryDirectory(prefix="iris-bench-worker-") as tmp:
        workdir = Path(tmp)
        server = NatsServer(workdir / "nats").start()
        broker = spawn("broker", server.url, [], workdir / "broker.log")
        try:
            for n_seq in settings.concurrency:
                rows.append(await bench_concurrency(settings, loaded, server, workdir, n_seq))
                print(f"  {n_seq} sequence(s): iris/direct {rows[-1]['iris_vs_direct']}", flush=True)
        finally:
            stop_all([broker], server)
            loaded.free()
    load_after = tuple(round(x, 2) for x in os.getloadavg())
    report = {
        "bench": "worker",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "load_average": {"before": load_before, "after": load_after},
        "settings": {
            "model": Path(settings.model).name,
            "max_tokens": settings.max_tokens,
            "rounds": settings.rounds,
            "threads": settings.threads,
            "n_gpu_layers": settings.offload.n_gpu_layers,
            "on_gpu": loaded.on_gpu,
        },
        "targets": {"single": TARGET_SINGLE, "batched_4": TARGET_BATCHED},
        "results": rows,
    }
    print_table(rows, load_before, load_after)
    return save_report(report, out)


async def bench_command(
    model: str,
    concurrency: list[int],
    out: Path,
    *,
    max_tokens: int,
    rounds: int,
    threads: int,
    n_gpu_layers: int,
    flash_attn: Any,
) -> dict[str, Any]:
    offload = Offload(n_gpu_layers=n_gpu_layers, flash_attn=flash_attn)
    return await run_worker_bench(BenchSettings(model, concurrency, max_tokens, rounds, threads, offload), out)
