"""`iris bench hostile`: broker memory and `/metrics` size under requests to arbitrary subjects.

A broker process and one FakeEngine worker (model `fake`) on a real nats-server; N requests are published to
random `iris.req.<model>.<workload>` names: to models no worker serves, and (`--served-every K`) every K-th
to `fake` under a random workload. Every one must get its final reply (`no_capacity`, or a one-token
result); after each round the broker's RSS and its `/metrics` (bytes, series) are read again. Requests that
can never run, and names a client invents, must leave no state behind: rounds after the first must not grow
either, and once the flows have been idle for the broker's `--metrics-idle` (`IDLE_S` here) their series
leave `/metrics` (`after_idle`).
"""

from __future__ import annotations

import asyncio
import platform
import random
import string
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from iris.bench.harness import ReplyCounter, rss_mb, save_report
from iris.launch.nats_server import NatsServer, free_port
from iris.launch.processes import spawn, wait_for_model
from iris.sdk.client import Client
from runtime.clock import now_ms
from schemas import headers as h
from schemas.subjects import request_subject

BODY = b'{"prompt": "hi", "max_tokens": 1, "stream": false}'
IDLE_S = 5.0
STATS_S = 1.0  # the broker's default --stats-s: idle flows are dropped on its stats turn


def metrics_size(port: int) -> tuple[int, int]:
    """(bytes, series) of the broker's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read()
    series = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
    return len(text), series


def random_token(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_lowercase + string.digits, k=rng.randint(4, 12)))


async def publish_random(client: Client, n: int, inbox: str, served_every: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    js = client.nc.jetstream()
    deadline = str(now_ms() + 600_000)
    pending = []
    for i in range(n):
        model = "fake" if served_every and i % served_every == 0 else random_token(rng)
        headers = {h.REPLY_TO: inbox, h.DEADLINE: deadline, h.MSG_ID: f"hostile-{seed}-{i}"}
        pending.append(await js.publish_async(request_subject(model, random_token(rng)), BODY, headers=headers))
        if len(pending) >= 2_000:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)


def measure(report: dict[str, Any], name: str, pid: int, port: int) -> None:
    size, series = metrics_size(port)
    report[name] = {"rss_mb": round(rss_mb(pid), 1), "metrics_bytes": size, "metrics_series": series}


async def one_round(client: Client, n_requests: int, served_every: int, seed: int) -> float:
    """Publish a round and wait for every final reply; seconds it took."""
    inbox = client.nc.new_inbox()
    served = len(range(0, n_requests, served_every)) if served_every else 0
    errors = await ReplyCounter(client.nc, inbox, "error", n_requests - served).subscribe()
    results = await ReplyCounter(client.nc, inbox, "result", served).subscribe()
    started = time.perf_counter()
    await publish_random(client, n_requests, inbox, served_every, seed)
    await errors.wait(1_800)
    if served:
        await results.wait(1_800)
    return round(time.perf_counter() - started, 1)


async def run_hostile_bench(n_requests: int, served_every: int, rounds: int, out: Path) -> dict[str, Any]:
    report: dict[str, Any] = {
        "bench": "hostile",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform()},
        "requests_per_round": n_requests,
        "served_every": served_every,
    }
    with tempfile.TemporaryDirectory(prefix="iris-hostile-") as tmp:
        workdir = Path(tmp)
        server = NatsServer(workdir / "nats").start()
        port = free_port()
        broker_args = ["--metrics-port", str(port), "--metrics-idle", str(IDLE_S)]
        procs = [spawn("broker", server.url, broker_args, workdir / "broker.log")]
        worker_args = ["--engine", "fake", "--model-name", "fake", "--slots", "8", "--worker-id", "w1"]
        procs.append(spawn("gpu_worker", server.url, worker_args, workdir / "worker.log"))
        try:
            async with await Client.connect(server.url) as client:
                await wait_for_model(client, "fake", procs)
                await client.complete("warm up", model="fake", max_tokens=1)
                measure(report, "before", procs[0].pid, port)
                for i in range(1, rounds + 1):
                    seconds = await one_round(client, n_requests, served_every, seed=i)
                    measure(report, f"after_round_{i}", procs[0].pid, port)
                    report[f"after_round_{i}"]["answered_s"] = seconds
                await asyncio.sleep(IDLE_S + 2 * STATS_S)  # a benchmark's pause: the flows go idle
                measure(report, "after_idle", procs[0].pid, port)
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
            server.stop()
    share = f", every {served_every}th to the served model" if served_every else ""
    print(f"{rounds} x {n_requests} requests to random model/workload names{share}")
    for name in ["before", *(f"after_round_{i}" for i in range(1, rounds + 1)), "after_idle"]:
        row = report[name]
        took = f", answered in {row['answered_s']} s" if "answered_s" in row else ""
        print(
            f"broker {name:<14} RSS {row['rss_mb']:>7} MB, /metrics {row['metrics_bytes']:>7} bytes, "
            f"{row['metrics_series']:>5} series{took}"
        )
    return save_report(report, out)
