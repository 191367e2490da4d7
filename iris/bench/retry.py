"""`iris bench retry`: what durable answers cost and give, on loopback with a real nats-server, broker
process and FakeEngine worker process.

  * first call: `complete` with an idempotency key, one at a time (16 zero-time tokens): what a request costs,
    its final stored in `IRIS_ANSWERS` before it is sent;
  * retry of a finished request with the same key: the stored final read back (target: p50 < 5 ms), its
    text and usage checked against the first call's;
  * the store itself: one final (a ~300-byte `Result`) published to `IRIS_ANSWERS` and acknowledged, awaited
    one by one: the latency a final reply pays per request on its worker or broker;
  * the store under load: n finals at once, as a busy worker stores them (pipelined): finals per second,
    CPU per final of this process and of nats-server (process time: robust on a shared machine), and the
    stream bytes per stored final.
"""

from __future__ import annotations

import asyncio
import functools
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from iris.bench.harness import percentiles, save_report, time_calls
from iris.bench.scale import cpu_s
from iris.launch.nats_server import NatsServer
from iris.launch.processes import spawn, stop_all, wait_for_model
from iris.sdk.client import Client
from runtime.answers import store_final
from schemas import headers as h
from schemas.messages import Result, Timings, Usage, encoder
from schemas.subjects import ANSWER_STREAM

TARGET_RETRY_P50_MS = 5.0
PROMPT = "Why is the sky blue?"


async def run_retry_bench(n: int, out: Path) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="iris-bench-retry-"))
    server = NatsServer(workdir / "nats").start()
    procs = [
        spawn("broker", server.url, [], workdir / "broker.log"),
        spawn("gpu_worker", server.url, ["--engine", "fake", "--model-name", "fake"], workdir / "worker.log"),
    ]
    try:
        async with await Client.connect(server.url) as client:
            await wait_for_model(client, "fake", procs)
            report = await _measure(client, n)
            report["store_pipelined"] = await _pipelined(client, n, server)
    finally:
        stop_all(procs, server)
    report |= {"requests": n, "machine": platform.processor() or platform.machine(), "time": time.time()}
    _print(report)
    return save_report(report, out)


async def _measure(client: Client, n: int) -> dict[str, Any]:
    firsts: dict[int, Result] = {}
    mismatched = 0

    async def first(i: int) -> None:
        firsts[i] = await client.complete(PROMPT, model="fake", max_tokens=16, idempotency_key=f"bench-{i}")

    async def retry(i: int) -> None:
        nonlocal mismatched
        again = await client.complete(PROMPT, model="fake", max_tokens=16, idempotency_key=f"bench-{i}")
        mismatched += (again.text, again.usage) != (firsts[i].text, firsts[i].usage)

    first_s = await time_calls(n, first, warmup=0)
    retry_s = await time_calls(n, retry, warmup=0)
    data = encoder.encode(Result("x" * 200, "length", Usage(8, 16), Timings(1.0, 2.0), worker="bench"))

    async def store(i: int) -> None:
        await store_final(client.nc, f"store-{i}", None, h.KIND_RESULT, data)

    store_s = await time_calls(n, store, warmup=min(50, n))
    return {
        "first_call": percentiles(first_s),
        "retry_of_finished": percentiles(retry_s),
        "store_final": percentiles(store_s),
        "retry_mismatches": mismatched,
        "target_retry_p50_ms": TARGET_RETRY_P50_MS,
    }


async def _pipelined(client: Client, n: int, server: NatsServer) -> dict[str, float]:
    assert server.process is not None
    server_cpu_s = functools.partial(cpu_s, server.process.pid)
    data = encoder.encode(Result("x" * 200, "length", Usage(8, 16), Timings(1.0, 2.0), worker="bench"))
    before = await client.nc.jetstream().stream_info(ANSWER_STREAM)
    own_s, nats_s, wall_s = time.process_time(), server_cpu_s(), time.perf_counter()
    await asyncio.gather(*(store_final(client.nc, f"many-{i}", None, h.KIND_RESULT, data) for i in range(n)))
    own_s, nats_s, wall_s = time.process_time() - own_s, server_cpu_s() - nats_s, time.perf_counter() - wall_s
    after = await client.nc.jetstream().stream_info(ANSWER_STREAM)
    return {
        "finals_per_s": round(n / wall_s, 1),
        "client_cpu_us_per_final": round(own_s * 1e6 / n, 1),
        "nats_cpu_us_per_final": round(nats_s * 1e6 / n, 1),
        "stream_bytes_per_final": round((after.state.bytes - before.state.bytes) / n, 1),
    }


def _print(report: dict[str, Any]) -> None:
    rows = [("first call (runs, stores)", "first_call"), ("retry, finished", "retry_of_finished")]
    rows.append(("store one final (acked)", "store_final"))
    print(f"{'':28} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for label, key in rows:
        figures = report[key]
        print(f"{label:28} {figures['p50_ms']:8.3f} {figures['p99_ms']:8.3f} {figures['mean_ms']:8.3f}")
    piped = report["store_pipelined"]
    print(
        f"store {report['requests']} finals at once: {piped['finals_per_s']:.0f}/s, CPU per final"
        f" {piped['client_cpu_us_per_final']:.0f} us here + {piped['nats_cpu_us_per_final']:.0f} us nats-server,"
        f" {piped['stream_bytes_per_final']:.0f} stream bytes each"
    )
    p50 = report["retry_of_finished"]["p50_ms"]
    verdict = "meets" if p50 < TARGET_RETRY_P50_MS else "misses"
    mismatches = report["retry_mismatches"]
    print(f"retry p50 {p50:.3f} ms {verdict} the {TARGET_RETRY_P50_MS} ms target; mismatches: {mismatches}")
