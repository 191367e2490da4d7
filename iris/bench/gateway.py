"""`iris bench gateway`: what the HTTP gateway adds over talking NATS directly, and how much it sustains.

One real stack on loopback: nats-server, broker, FakeEngine worker processes (zero-time tokens, many
slots) and a gateway process. Two parts:
  * latency, one request at a time: the same short non-streaming request through the Python SDK over NATS
    and through `POST /v1/chat/completions`; added = HTTP percentile − NATS percentile;
  * throughput: `--clients` concurrent HTTP clients (keep-alive) for `--seconds`, each sending its next
    request when the last answer arrives; requests/s, error count and latency percentiles under load.
Prints a table and saves JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from iris.bench.harness import added_latency, percentiles, save_report, time_calls, wait_http
from iris.bench.status_page import print_status_cost, status_cost
from iris.launch.nats_server import NatsServer, free_port
from iris.launch.processes import spawn, stop_all, wait_for_model
from iris.sdk.client import Client

TARGET_ADDED_P50_MS = 3.0
TARGET_REQUESTS_PER_S = 1000.0
MAX_TOKENS = 4
BODY = {"model": "fake", "messages": [{"role": "user", "content": "Why is the sky blue?"}], "max_tokens": MAX_TOKENS}


async def _latency(client: Client, http: httpx.AsyncClient, n: int) -> dict[str, Any]:
    async def nats_call(_: int) -> None:
        await client.complete(messages=BODY["messages"], model="fake", max_tokens=MAX_TOKENS)  # type: ignore[arg-type]

    async def http_call(_: int) -> None:
        response = await http.post("/v1/chat/completions", json=BODY)
        response.raise_for_status()

    nats_s = await time_calls(n, nats_call, warmup=min(50, n))
    http_s = await time_calls(n, http_call, warmup=min(50, n))
    return added_latency("nats", nats_s, "http", http_s)


async def _throughput(base_url: str, clients: int, seconds: float) -> dict[str, Any]:
    """Closed-loop load from `clients` keep-alive connections. aiohttp, not httpx, generates it: on a 2-core
    host the load generator shares the CPU with the stack, and httpx's pool costs ~5x more per request."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    body = json.dumps(BODY).encode()
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(base_url, connector=connector, timeout=aiohttp.ClientTimeout(60)) as http:
        end = time.perf_counter() + seconds

        async def one_client() -> None:
            while time.perf_counter() < end:
                start = time.perf_counter()
                async with http.post("/v1/chat/completions", data=body, headers=headers) as response:
                    await response.read()
                    if response.status == 200:
                        latencies.append(time.perf_counter() - start)
                    else:
                        code = response.headers.get("x-iris-error", str(response.status))
                        errors[code] = errors.get(code, 0) + 1

        began = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        elapsed = time.perf_counter() - began
    return {
        "clients": clients,
        "seconds": round(elapsed, 2),
        "completed": len(latencies),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "errors": errors,
        "latency": percentiles(latencies) if latencies else {},
    }


def _start_stack(workdir: Path, workers: int, slots: int) -> tuple[NatsServer, list[Any], str]:
    server = NatsServer(workdir / "nats").start()
    port = free_port()
    procs = [spawn("broker", server.url, [], workdir / "broker.log")]
    for i in range(workers):
        args = ["--engine", "fake", "--model-name", "fake", "--slots", str(slots), "--worker-id", f"bench-{i}"]
        procs.append(spawn("gpu_worker", server.url, args, workdir / f"worker-{i}.log"))
    procs.append(spawn("gateway", server.url, ["--http-port", str(port)], workdir / "gateway.log"))
    return server, procs, f"http://127.0.0.1:{port}"


async def run_gateway_bench(
    n_latency: int, clients: int, seconds: float, workers: int, slots: int, out: Path, status_viewers: int = 0
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="iris-bench-gw-") as tmp:
        server, procs, base_url = _start_stack(Path(tmp), workers, slots)
        try:
            async with await Client.connect(server.url) as client:
                await wait_for_model(client, "fake", procs)
                await wait_http(base_url)
                async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
                    latency = await _latency(client, http, n_latency)
            throughput = await _throughput(base_url, clients, seconds)
            status = (
                await status_cost(base_url, procs[-1].pid, _throughput, clients, seconds, status_viewers)
                if status_viewers
                else None
            )
        finally:
            stop_all(procs, server)
    report = {
        "bench": "gateway",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "setup": {
            "workers": workers,
            "slots_per_worker": slots,
            "max_tokens": MAX_TOKENS,
            "engine": "fake (0 s/token)",
        },
        "targets": {"added_p50_ms": TARGET_ADDED_P50_MS, "requests_per_s": TARGET_REQUESTS_PER_S},
        "latency": latency,
        "throughput": throughput,
        **({"status_page": status} if status else {}),
    }
    _print(report)
    return save_report(report, out)


def _print(report: dict[str, Any]) -> None:
    lat, tp = report["latency"], report["throughput"]
    print(f"latency, one request at a time ({lat['requests']} each, {MAX_TOKENS} tokens, non-streaming)")
    print(f"  {'':22}{'p50':>10}{'p99':>10}")
    print(f"  {'NATS (Python SDK)':22}{lat['nats']['p50_ms']:>8.3f}ms{lat['nats']['p99_ms']:>8.3f}ms")
    print(f"  {'HTTP (OpenAI chat)':22}{lat['http']['p50_ms']:>8.3f}ms{lat['http']['p99_ms']:>8.3f}ms")
    print(
        f"  {'added by HTTP':22}{lat['added_p50_ms']:>8.3f}ms{lat['added_p99_ms']:>8.3f}ms"
        f"   target p50 <= {TARGET_ADDED_P50_MS} ms"
    )
    print(f"throughput, {tp['clients']} concurrent HTTP clients for {tp['seconds']} s")
    p = tp["latency"]
    print(
        f"  {tp['requests_per_s']} requests/s ({tp['completed']} completed, errors {tp['errors'] or 'none'})"
        f"   target >= {TARGET_REQUESTS_PER_S:.0f}/s"
    )
    if p:
        print(f"  latency under load p50 {p['p50_ms']:.1f} ms, p99 {p['p99_ms']:.1f} ms")
    if "status_page" in report:
        print_status_cost(report["status_page"])
