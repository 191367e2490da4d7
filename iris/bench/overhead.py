"""`iris bench overhead`: the latency Iris adds over calling the same engine in-process.

Two parts, each run first in-process and then through a real nats-server, broker process and worker
process on loopback, one request at a time (so queueing never enters the figure):
  * FakeEngine with zero-time tokens: full request latency, call → final result (non-streaming), and the
    same request streamed chunk by chunk;
  * the embedded model through llama-cpp-python: time to first token.
Added latency = Iris percentile − in-process percentile. Prints a table and saves JSON.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from gpu_worker.engines.fake import FakeEngine
from gpu_worker.engines.protocol import StopSignal
from iris.bench.harness import added_latency, time_calls
from iris.launch.nats_server import NatsServer
from iris.launch.processes import spawn, stop_all, wait_for_model
from iris.sdk.client import Client
from schemas.messages import GenerateRequest

PROMPTS = [
    "Why is the sky blue?",
    "Name three uses of copper.",
    "What is a prime number?",
    "Summarize the water cycle in one sentence.",
    "Give a synonym for quick.",
]
LLAMA_THREADS = 1
TARGET_ADDED_P50_MS = 2.0
TARGET_ADDED_P99_MS = 5.0


async def first_token_s(events: AsyncIterator[object], start: float) -> float:
    """Seconds from `start` to the first text, consuming the whole answer so the next call starts idle."""
    first: float | None = None
    async for event in events:
        if first is None and getattr(event, "text", ""):
            first = time.perf_counter() - start
    assert first is not None, "no text produced"
    return first


async def through_iris(
    workdir: Path, worker_args: list[str], model: str, n: int, call: Callable[[Client, int], Awaitable[float | None]]
) -> list[float]:
    server = NatsServer(Path(tempfile.mkdtemp(prefix=f"nats-{model}-", dir=workdir))).start()
    procs = [
        spawn("broker", server.url, [], workdir / "broker.log"),
        spawn("gpu_worker", server.url, worker_args, workdir / f"worker-{model}.log"),
    ]
    try:
        async with await Client.connect(server.url) as client:
            await wait_for_model(client, model, procs)
            return await time_calls(n, lambda i: call(client, i), warmup=min(50, n))
    finally:
        stop_all(procs, server)


async def fake_parts(workdir: Path, n: int) -> list[dict[str, Any]]:
    """Zero-time FakeEngine, 16 tokens: a whole request (`complete`, result only) and a streamed one."""
    engine = FakeEngine("fake", tokens_per_s=0)
    request = GenerateRequest(prompt=PROMPTS[0], max_tokens=16)

    async def direct(_: int) -> None:
        async for _event in engine.generate(request, StopSignal()):
            pass

    async def iris_complete(client: Client, _: int) -> None:
        await client.complete(PROMPTS[0], model="fake", max_tokens=16)

    async def iris_stream(client: Client, _: int) -> None:
        async for _chunk in client.generate(PROMPTS[0], model="fake", max_tokens=16):
            pass

    direct_s = await time_calls(n, direct, warmup=50)
    worker = ["--engine", "fake", "--model-name", "fake"]
    return [
        compare(
            "FakeEngine, request latency (16 tokens)",
            direct_s,
            await through_iris(workdir, worker, "fake", n, iris_complete),
        ),
        compare(
            "FakeEngine, streamed, all 16 chunks", direct_s, await through_iris(workdir, worker, "fake", n, iris_stream)
        ),
    ]


async def real_part(workdir: Path, n: int) -> dict[str, Any]:
    from gpu_worker.embedded_model import EMBEDDED_MODEL_NAME, embedded_model_path
    from gpu_worker.engines.llama.engine import LlamaCppEngine

    # One llama thread in both arms: on a 2-core host, two OpenMP threads that spin in lock step are
    # stalled by any other process (nats-server, broker), which would charge core contention to Iris.
    engine = LlamaCppEngine(str(embedded_model_path()), EMBEDDED_MODEL_NAME, n_threads=LLAMA_THREADS)
    await engine.load()

    async def direct(i: int) -> float:
        request = GenerateRequest(prompt=PROMPTS[i % len(PROMPTS)], max_tokens=4, temperature=0)
        return await first_token_s(engine.generate(request, StopSignal()), time.perf_counter())

    async def iris(client: Client, i: int) -> float:
        start = time.perf_counter()
        generation = client.generate(PROMPTS[i % len(PROMPTS)], model=EMBEDDED_MODEL_NAME, max_tokens=4, temperature=0)
        return await first_token_s(generation, start)

    direct_s = await time_calls(n, direct, warmup=5)
    await engine.close()
    worker = ["--engine", "llama", "--threads", str(LLAMA_THREADS)]
    iris_s = await through_iris(workdir, worker, EMBEDDED_MODEL_NAME, n, iris)
    return compare("embedded model, time to first token", direct_s, iris_s)


def compare(label: str, direct_s: list[float], iris_s: list[float]) -> dict[str, Any]:
    return {"label": label, **added_latency("direct", direct_s, "iris", iris_s)}


def print_table(parts: list[dict[str, Any]]) -> None:
    columns = ("direct p50", "iris p50", "added p50", "direct p99", "iris p99", "added p99")
    print(f"{'part':44} {'n':>6} " + " ".join(f"{c:>11}" for c in columns))
    for p in parts:
        d, i = p["direct"], p["iris"]
        values = (d["p50_ms"], i["p50_ms"], p["added_p50_ms"], d["p99_ms"], i["p99_ms"], p["added_p99_ms"])
        print(f"{p['label']:44} {p['requests']:>6} " + " ".join(f"{v:>9.3f}ms" for v in values))
    print(f"targets: added p50 <= {TARGET_ADDED_P50_MS} ms, added p99 <= {TARGET_ADDED_P99_MS} ms")


async def run_overhead_bench(n_fake: int, n_real: int, out: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="iris-bench-") as tmp:
        workdir = Path(tmp)
        parts = await fake_parts(workdir, n_fake)
        if n_real:
            parts.append(await real_part(workdir, n_real))
    report = {
        "bench": "overhead",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": __import__("os").cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "targets": {"added_p50_ms": TARGET_ADDED_P50_MS, "added_p99_ms": TARGET_ADDED_P99_MS},
        "parts": parts,
    }
    print_table(parts)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"saved {out}")
    return report
