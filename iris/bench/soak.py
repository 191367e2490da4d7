"""`iris bench soak`: twice the capacity for minutes, through the HTTP gateway.

The stack is real (nats-server, broker, FakeEngine worker, gateway as processes). Two workloads, `gold`
(weight 3) and `bronze` (weight 1), each reached with its own API key and each offered as much as the
whole capacity, so together 2× capacity and each more than its share. `max_queue` bounds each workload's
queue; the excess must get 429 with Retry-After. The run first measures capacity (closed loop), then
offers 2× that as open-loop Poisson arrivals for `--duration` seconds and reports:

  * offered and served requests/s, 429s (and whether each had Retry-After), any other error;
  * the deepest queue per workload the broker reported (`iris.broker.stats`) against `max_queue`;
  * RSS of every process at the start and the end of the overload;
  * each workload's share of the tokens served vs its weight share (target: within ±5% of it).
"""

from __future__ import annotations

import asyncio
import json
import platform
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from iris.bench.harness import rss_mb, save_report, wait_http
from iris.launch.nats_server import NatsServer, free_port
from iris.launch.processes import spawn, stop_all
from runtime.connection import connect
from schemas.messages import BrokerStats
from schemas.subjects import BROKER_STATS_SUBJECT

WEIGHTS = {"gold": 3.0, "bronze": 1.0}
KEYS = {"gold": "soak-gold-key", "bronze": "soak-bronze-key"}
MAX_QUEUE = 40
MAX_TOKENS = 16
SHARE_TOLERANCE = 0.05
OVERLOAD_MARGIN = 1.15
stats_decoder = msgspec.json.Decoder(BrokerStats)


class Tally:
    def __init__(self) -> None:
        self.window = (0.0, 0.0)  # the overload's steady part: what shares and served rate are measured on
        self.offered = dict.fromkeys(WEIGHTS, 0)
        self.served = dict.fromkeys(WEIGHTS, 0)
        self.finished: list[tuple[float, str, int]] = []  # (monotonic time, workload, completion tokens)
        self.rejected_429 = 0
        self.retry_after_missing = 0
        self.other: dict[str, int] = {}

    async def call(self, http: aiohttp.ClientSession, workload: str, counted: bool) -> None:
        body = {"model": "fake", "max_tokens": MAX_TOKENS, "messages": [{"role": "user", "content": "soak"}]}
        headers = {"Authorization": f"Bearer {KEYS[workload]}"}
        if counted:
            self.offered[workload] += 1
        async with http.post("/v1/chat/completions", json=body, headers=headers) as response:
            payload = await response.read()
            if not counted:
                return
            if response.status == 200:
                self.served[workload] += 1
                tokens = json.loads(payload)["usage"]["completion_tokens"]
                self.finished.append((time.monotonic(), workload, tokens))
            elif response.status == 429:
                self.rejected_429 += 1
                self.retry_after_missing += "Retry-After" not in response.headers
            else:
                code = response.headers.get("x-iris-error", str(response.status))
                self.other[code] = self.other.get(code, 0) + 1


async def measure_capacity(http: aiohttp.ClientSession, seconds: float) -> float:
    """Served requests/s with every slot kept busy (closed loop, both workloads)."""
    tally = Tally()
    end = time.monotonic() + seconds

    async def loop(workload: str) -> None:
        while time.monotonic() < end:
            await tally.call(http, workload, counted=True)

    began = time.monotonic()
    await asyncio.gather(*(loop(w) for w in WEIGHTS for _ in range(16)))
    return sum(tally.served.values()) / (time.monotonic() - began)


async def overload(http: aiohttp.ClientSession, rate_per_workload: float, seconds: float, tally: Tally) -> None:
    calls: set[asyncio.Task[None]] = set()
    rng = random.Random(7)
    began = time.monotonic()
    tally.window = (began + min(10.0, seconds / 4), began + seconds)  # queues fill first; the drain is after

    async def arrivals(workload: str) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await asyncio.sleep(rng.expovariate(rate_per_workload))
            task = asyncio.create_task(tally.call(http, workload, counted=True))
            calls.add(task)
            task.add_done_callback(calls.discard)

    await asyncio.gather(*(arrivals(w) for w in WEIGHTS))
    await asyncio.gather(*calls)


def rss_all(procs: dict[str, Any]) -> dict[str, float]:
    return {name: round(rss_mb(proc.pid), 1) for name, proc in procs.items()}


async def sample_rss(procs: dict[str, Any], timeline: list[dict[str, float]], every_s: float = 30.0) -> None:
    """RSS of every process every `every_s`: growth that levels off is a warming cache, not a leak."""
    began = time.monotonic()
    while True:
        timeline.append({"t_s": round(time.monotonic() - began, 1), **rss_all(procs)})
        await asyncio.sleep(every_s)


def _stack(workdir: Path, slots: int, tokens_per_s: float) -> tuple[NatsServer, dict[str, Any], str]:
    server = NatsServer(workdir / "nats").start()
    config = workdir / "iris.toml"
    weights = ", ".join(f"{w} = {v}" for w, v in WEIGHTS.items())
    config.write_text(f"[broker]\nmax_queue = {MAX_QUEUE}\nworkload_weights = {{ {weights} }}\n")
    port = free_port()
    keys = [arg for w, key in KEYS.items() for arg in ("--api-key", f"{key}:{w}")]
    worker_args = ["--engine", "fake", "--model-name", "fake", "--slots", str(slots), "--fake-tps", str(tokens_per_s)]
    procs = {
        "broker": spawn("broker", server.url, ["--config", str(config)], workdir / "broker.log"),
        "worker": spawn("gpu_worker", server.url, worker_args, workdir / "worker.log"),
        "gateway": spawn("gateway", server.url, ["--http-port", str(port), *keys], workdir / "gateway.log"),
    }
    return server, procs, f"http://127.0.0.1:{port}"


async def run_soak_bench(duration_s: float, slots: int, tokens_per_s: float, out: Path) -> dict[str, Any]:
    report: dict[str, Any] = {"bench": "soak", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    report["machine"] = {"platform": platform.platform()}
    with tempfile.TemporaryDirectory(prefix="iris-soak-") as tmp:
        server, procs, base_url = _stack(Path(tmp), slots, tokens_per_s)
        try:
            await wait_http(base_url)
            nc = await connect(server.url, "iris-bench-soak")
            deepest = dict.fromkeys(WEIGHTS, 0)

            async def on_stats(msg: Any) -> None:
                for row in stats_decoder.decode(msg.data).workloads:
                    if row.workload in deepest:
                        deepest[row.workload] = max(deepest[row.workload], row.queued)

            await nc.subscribe(BROKER_STATS_SUBJECT, cb=on_stats)
            connector = aiohttp.TCPConnector(limit=2000)
            timeout = aiohttp.ClientTimeout(total=300)
            async with aiohttp.ClientSession(base_url, connector=connector, timeout=timeout) as http:
                capacity = await measure_capacity(http, 15.0)
                report["capacity_requests_per_s"] = round(capacity, 2)
                report["rss_start_mb"] = rss_all({"nats": server.process, **procs})
                tally = Tally()
                timeline: list[dict[str, float]] = []
                sampler = asyncio.create_task(sample_rss({"nats": server.process, **procs}, timeline))
                # Each workload alone offers the whole capacity (and a margin: the closed loop measures a
                # little under what a full queue sustains), so together at least 2x.
                await overload(http, capacity * OVERLOAD_MARGIN, duration_s, tally)
                sampler.cancel()
                report["rss_end_mb"] = rss_all({"nats": server.process, **procs})
                report["rss_timeline_mb"] = timeline
            await nc.close()
        finally:
            stop_all(list(procs.values()), server)
    report.update(_summary(tally, duration_s, deepest))
    _print(report)
    return save_report(report, out)


def _summary(tally: Tally, duration_s: float, deepest: dict[str, int]) -> dict[str, Any]:
    start, end = tally.window
    tokens = dict.fromkeys(WEIGHTS, 0)
    served_in_window = 0
    for when, workload, completion_tokens in tally.finished:
        if start <= when <= end:
            tokens[workload] += completion_tokens
            served_in_window += 1
    total_tokens = sum(tokens.values()) or 1
    weight_sum = sum(WEIGHTS.values())
    shares = {
        w: {"share": round(tokens[w] / total_tokens, 4), "target": round(WEIGHTS[w] / weight_sum, 4)} for w in WEIGHTS
    }
    offered_per_s = sum(tally.offered.values()) / duration_s
    served_per_s = served_in_window / max(end - start, 1e-9)
    return {
        "duration_s": duration_s,
        "offered_requests_per_s": round(offered_per_s, 2),
        "served_requests_per_s": round(served_per_s, 2),
        "overload_factor": round(offered_per_s / max(served_per_s, 1e-9), 2),
        "offered": tally.offered,
        "served": tally.served,
        "rejected_429": tally.rejected_429,
        "retry_after_missing": tally.retry_after_missing,
        "other_errors": tally.other,
        "deepest_queue": deepest,
        "max_queue": MAX_QUEUE,
        "token_share": shares,
        "shares_within_target": all(
            abs(s["share"] - s["target"]) <= SHARE_TOLERANCE * s["target"] for s in shares.values()
        ),
    }


def _print(report: dict[str, Any]) -> None:
    print(
        f"capacity {report['capacity_requests_per_s']} requests/s; offered {report['offered_requests_per_s']}/s "
        f"for {report['duration_s']} s, served {report['served_requests_per_s']}/s"
    )
    print(
        f"429: {report['rejected_429']} (without Retry-After: {report['retry_after_missing']}); "
        f"other errors: {report['other_errors'] or 'none'}"
    )
    print(f"deepest queue {report['deepest_queue']} (max_queue {report['max_queue']} per workload)")
    for name in report["rss_start_mb"]:
        steps = " ".join(f"{point[name]:.0f}" for point in report["rss_timeline_mb"])
        print(
            f"RSS {name:8} {report['rss_start_mb'][name]:7.1f} MB -> {report['rss_end_mb'][name]:7.1f} MB "
            f"(every 30 s: {steps})"
        )
    for workload, share in report["token_share"].items():
        print(f"{workload:7} token share {share['share']:.4f} (target {share['target']:.4f} ±5%)")
