"""`iris bench llama-server`: Iris against llama-cpp-python's own OpenAI server, same file, same settings.

One run, two arms on the same GGUF file, context per sequence, threads, GPU offload and flash attention:
  * iris: a real nats-server, broker and one worker process with `--slots N`; N streamed requests at once;
  * server: `python -m llama_cpp.server` (one model, one sequence at a time: it serializes requests behind
    a lock); N `/v1/completions` requests at once, non-streamed so its own usage counts the tokens.
Tokens/s = completion tokens / wall time from the first request out to the last answer in; rounds
alternate the arms, figures are medians. Time to first token: one request at a time, streamed in both
arms, until the first text arrives. Prints a table and saves JSON; works on CPU as on GPU.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from iris.bench.harness import percentiles, save_report, time_calls, wait_http
from iris.bench.overhead import first_token_s
from iris.bench.worker import PROMPTS, iris_round
from iris.launch.nats_server import NatsServer, free_port
from iris.launch.processes import Process, spawn, stop_all, wait_for_model
from iris.sdk.client import Client

TARGET_VS_SERVER = 0.90  # iris / llama_cpp.server at every concurrency


@dataclass(frozen=True)
class ServerBenchSettings:
    model: str
    concurrency: list[int]
    max_tokens: int
    rounds: int
    threads: int
    n_gpu_layers: int
    flash_attn: bool
    ttft_requests: int

    @property
    def ctx_per_slot(self) -> int:
        return 128 * (1 + (self.max_tokens + 64) // 128)

    def worker_args(self, slots: int) -> list[str]:
        args = ["--engine", "llama", "--model", self.model, "--model-name", f"bench-s{slots}", "--slots", str(slots)]
        args += ["--threads", str(self.threads), "--ctx-per-slot", str(self.ctx_per_slot)]
        return args + ["--n-gpu-layers", str(self.n_gpu_layers), "--flash-attn", "on" if self.flash_attn else "off"]

    def server_command(self, port: int) -> list[str]:
        settings = {
            "--model": self.model, "--model_alias": "bench", "--host": "127.0.0.1", "--port": str(port),
            "--n_ctx": str(self.ctx_per_slot), "--n_threads": str(self.threads),
            "--n_threads_batch": str(self.threads), "--n_gpu_layers": str(self.n_gpu_layers),
            "--flash_attn": str(self.flash_attn).lower(), "--verbose": "false",
        }  # fmt: skip
        return [sys.executable, "-m", "llama_cpp.server", *(part for item in settings.items() for part in item)]


def start_server(settings: ServerBenchSettings, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(settings.server_command(port), stdout=log, stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{port}"


async def server_round(http: httpx.AsyncClient, n_seq: int, max_tokens: int) -> dict[str, float]:
    async def one(i: int) -> int:
        body = {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens, "temperature": 0}
        response = await http.post("/v1/completions", json=body)
        response.raise_for_status()
        return int(response.json()["usage"]["completion_tokens"])

    start = time.perf_counter()
    tokens = await asyncio.gather(*(one(i) for i in range(n_seq)))
    return {"tokens": sum(tokens), "seconds": time.perf_counter() - start}


async def server_first_token_s(http: httpx.AsyncClient, i: int, max_tokens: int) -> float:
    """Seconds to the first streamed text, reading the whole answer so the next request starts idle."""
    body = {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens, "temperature": 0, "stream": True}
    start, first = time.perf_counter(), None
    async with http.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if first is None and line.startswith("data: {") and json.loads(line[6:])["choices"][0]["text"]:
                first = time.perf_counter() - start
    assert first is not None, "llama_cpp.server streamed no text"
    return first


def tokens_per_s(rounds: list[dict[str, float]]) -> float:
    return statistics.median(r["tokens"] / r["seconds"] for r in rounds)


async def compare_at(
    settings: ServerBenchSettings, client: Client, model: str, *, http: httpx.AsyncClient, n_seq: int
) -> dict[str, Any]:
    await iris_round(client, model, n_seq, 8)  # warm-up: first decode allocates buffers
    await server_round(http, 1, 8)
    iris: list[dict[str, float]] = []
    server: list[dict[str, float]] = []
    for _ in range(settings.rounds):
        iris.append(await iris_round(client, model, n_seq, settings.max_tokens))
        server.append(await server_round(http, n_seq, settings.max_tokens))
    iris_tps, server_tps = tokens_per_s(iris), tokens_per_s(server)
    return {
        "sequences": n_seq,
        "iris_tokens_per_s": round(iris_tps, 2),
        "server_tokens_per_s": round(server_tps, 2),
        "iris_vs_server": round(iris_tps / server_tps, 3),
        "rounds": {"iris": iris, "server": server},
    }


async def first_tokens(
    settings: ServerBenchSettings, client: Client, http: httpx.AsyncClient, model: str
) -> dict[str, Any]:
    n, max_tokens = settings.ttft_requests, min(settings.max_tokens, 16)

    async def iris(i: int) -> float:
        start = time.perf_counter()
        generation = client.generate(PROMPTS[i % len(PROMPTS)], model=model, max_tokens=max_tokens, temperature=0)
        return await first_token_s(aiter(generation), start)

    iris_s = await time_calls(n, iris, warmup=1)
    server_s = await time_calls(n, lambda i: server_first_token_s(http, i, max_tokens), warmup=1)
    iris_p, server_p = percentiles(iris_s), percentiles(server_s)
    return {
        "requests": n,
        "iris": iris_p,
        "server": server_p,
        "iris_minus_server_p50_ms": round(iris_p["p50_ms"] - server_p["p50_ms"], 3),
        "iris_vs_server_p50": round(iris_p["p50_ms"] / server_p["p50_ms"], 3),
    }


async def with_worker(
    settings: ServerBenchSettings, server: NatsServer, workdir: Path, slots: int,
    measure: Callable[[Client, str], Awaitable[dict[str, Any]]],
) -> dict[str, Any]:  # fmt: skip
    model = f"bench-s{slots}"
    worker = spawn("gpu_worker", server.url, settings.worker_args(slots), workdir / f"worker-s{slots}.log")
    try:
        async with await Client.connect(server.url) as client:
            await wait_for_model(client, model, [worker])
            return await measure(client, model)
    finally:
        worker.terminate()
        worker.wait(timeout=60)


async def measure_all(settings: ServerBenchSettings, workdir: Path, base_url: str) -> dict[str, Any]:
    nats = NatsServer(workdir / "nats").start()
    broker: Process = spawn("broker", nats.url, [], workdir / "broker.log")
    rows: list[dict[str, Any]] = []
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=600.0) as http:
            for n_seq in settings.concurrency:
                measure = functools.partial(compare_at, settings, http=http, n_seq=n_seq)
                row = await with_worker(settings, nats, workdir, n_seq, measure)
                rows.append(row)
                print(f"  {n_seq} sequence(s): iris/server {row['iris_vs_server']}", flush=True)
            ttft = await with_worker(settings, nats, workdir, 1, lambda c, m: first_tokens(settings, c, http, m))
    finally:
        stop_all([broker], nats)
    return {"results": rows, "time_to_first_token": ttft}


def print_table(report: dict[str, Any]) -> None:
    print(f"{'sequences':>10} {'iris tok/s':>12} {'server tok/s':>13} {'iris/server':>12}")
    for row in report["results"]:
        print(f"{row['sequences']:>10} {row['iris_tokens_per_s']:>12.1f} {row['server_tokens_per_s']:>13.1f}"
              f" {row['iris_vs_server']:>12.3f}")  # fmt: skip
    ttft = report["time_to_first_token"]
    print(f"time to first token p50: iris {ttft['iris']['p50_ms']} ms, server {ttft['server']['p50_ms']} ms")
    print(f"target: iris/server >= {TARGET_VS_SERVER} at every concurrency")


async def run_llama_server_bench(settings: ServerBenchSettings, out: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="iris-bench-llama-server-") as tmp:
        workdir = Path(tmp)
        process, base_url = start_server(settings, workdir / "llama-server.log")
        try:
            await wait_http(base_url, "/v1/models", timeout_s=300.0)
            figures = await measure_all(settings, workdir, base_url)
        except BaseException:
            print((workdir / "llama-server.log").read_text()[-2000:], file=sys.stderr)
            raise
        finally:
            process.terminate()
            process.wait(timeout=60)
    report = {
        "bench": "llama-server",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "settings": {**settings.__dict__, "model": Path(settings.model).name, "ctx_per_slot": settings.ctx_per_slot},
        "target_vs_server": TARGET_VS_SERVER,
        **figures,
    }
    print_table(report)
    return save_report(report, out)
