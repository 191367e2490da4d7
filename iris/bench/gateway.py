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

from iris.bench.harness import percentiles, save_report, time_calls, wait_http
from iris.launch.nats_server import NatsServer, free_port
from iris.launch.processes import spawn, stop_all, wait_for_model
from iris.sdk.client import Client

TARGET_ADDED_P50_MS = 3.0
TARGET_REQUESTS_PER_S = 1000.0
TARGET_STATUS_COST_PERCENT = 1.0
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
    direct, over_http = percentiles(nats_s), percentiles(http_s)
    return {
        "requests": n,
        "nats": direct,
        "http": over_http,
        "added_p50_ms": round(over_http["p50_ms"] - direct["p50_ms"], 3),
        "added_p99_ms": round(over_http["p99_ms"] - direct["p99_ms"], 3),
    }


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


class StatusViewers:
    """`count` event-stream readers of `/status/events` (a browser's EventSource), counting snapshots."""

    def __init__(self, base_url: str, count: int) -> None:
        self.base_url, self.count = base_url, count
        self.snapshots = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> StatusViewers:
        self._session = aiohttp.ClientSession(self.base_url, timeout=aiohttp.ClientTimeout(None))
        self._tasks = [asyncio.create_task(self._read(self._session)) for _ in range(self.count)]
        return self

    async def _read(self, session: aiohttp.ClientSession) -> None:
        async with session.get("/status/events", headers={"Accept": "text/event-stream"}) as response:
            response.raise_for_status()
            async for line in response.content:
                self.snapshots += line.startswith(b"event: snapshot")

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _status_cost(base_url: str, gateway_pid: int, clients: int, seconds: float, viewers: int) -> dict[str, Any]:
    """Throughput without and with `viewers` on the status stream, in ABBA order."""
    segments = []
    for watched in (False, True, True, False):
        cpu_before = cpu_s(gateway_pid)
        if watched:
            async with StatusViewers(base_url, viewers) as readers:
                run = await _throughput(base_url, clients, seconds)
            snapshots = readers.snapshots
        else:
            run, snapshots = await _throughput(base_url, clients, seconds), 0
        cpu_per_1000 = (cpu_s(gateway_pid) - cpu_before) / max(1, run["completed"]) * 1000
        segments.append(
            {
                "viewers": viewers if watched else 0,
                "requests_per_s": run["requests_per_s"],
                "errors": run["errors"],
                "snapshots_read": snapshots,
                "gateway_cpu_s_per_1000_requests": round(cpu_per_1000, 4),
            }
        )

    def mean(watched: bool, field: str) -> float:
        values = [s[field] for s in segments if bool(s["viewers"]) == watched]
        return sum(values) / len(values)

    without, with_viewers = mean(False, "requests_per_s"), mean(True, "requests_per_s")
    cpu_without, cpu_with = (
        mean(False, "gateway_cpu_s_per_1000_requests"),
        mean(True, "gateway_cpu_s_per_1000_requests"),
    )
    return {
        "viewers": viewers,
        "segment_s": seconds,
        "segments": segments,
        "requests_per_s_without": round(without, 1),
        "requests_per_s_with": round(with_viewers, 1),
        "throughput_cost_percent": round((1 - with_viewers / without) * 100, 2),
        "cpu_cost_percent": round((cpu_with / cpu_without - 1) * 100, 2),
        "target_cost_percent": TARGET_STATUS_COST_PERCENT,
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
                await _status_cost(base_url, procs[-1].pid, clients, seconds, status_viewers)
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
        _print_status(report["status_page"])


def _print_status(status: dict[str, Any]) -> None:
    print(f"status page: {status['viewers']} viewer(s) on /status/events, segments of {status['segment_s']} s (ABBA)")
    for segment in status["segments"]:
        cpu = segment["gateway_cpu_s_per_1000_requests"]
        print(
            f"  viewers {segment['viewers']}: {segment['requests_per_s']:>8} requests/s, gateway CPU"
            f" {cpu:.3f} s per 1000 requests, {segment['snapshots_read']} snapshots read"
        )
    print(
        f"  cost: throughput {status['throughput_cost_percent']}%,"
        f" gateway CPU per request {status['cpu_cost_percent']}%   target < {status['target_cost_percent']}%"
    )
