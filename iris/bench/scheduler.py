"""`iris bench scheduler`: how fast the broker dispatches, and what its index costs in memory.

Three measurements in one run, all on loopback with a real nats-server:
  * raw JetStream for comparison: publish → pull fetch → ack of the same number of messages;
  * Iris dispatch rate from a standing backlog (the scheduler's own rate, and the target's figure; the
    median of three backlogs, each printed):
    admission tickets hold every slot of the model (`max_concurrency` = the workers' slots) while N
    requests are published and queued; then the tickets are released and the broker hands the backlog to
    zero-time FakeEngine workers; rate = replies from the first final reply to the last (each one dispatch);
  * Iris end to end: requests published as fast as JetStream takes them while dispatch runs, from first
    publish to last final reply; here the load client's publishing shares the two cores;
  * broker RSS with N requests waiting (one slow slot keeps them queued), read from /proc, on a fresh broker
    that takes over after the dispatch phases (their RSS is reported apart).
With `--preemption on` the dispatch phases run on a broker with priority preemption on (`preempt_ratio` 2,
its other guards at their defaults); with `both`, off and on round by round in turn, a fresh broker
taking over for each: what preemption's checks cost dispatch, beside the rate without (`preemption_on`).
"""

from __future__ import annotations

import asyncio
import functools
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
from nats.js.api import RetentionPolicy, StreamConfig

from iris.bench.harness import ReplyCounter, rss_mb, save_report
from iris.launch.nats_server import NatsServer
from iris.launch.processes import Process, spawn, wait_for_model
from iris.sdk.client import Client
from runtime.clock import now_ms
from schemas.messages import broker_stats_decoder
from schemas.subjects import BROKER_STATS_SUBJECT, request_subject

TARGET_DISPATCH_PER_S = 5000
TARGET_RSS_MB = 150
BACKLOG_ROUNDS = 3  # the machine's speed drifts by 10-20% within minutes: the median of three backlogs
FAST_WORKERS = 2
FAST_SLOTS = 64
PREEMPT_RATIO = 2.0
PREEMPTION = ("off", "on", "both")
BODY = b'{"prompt": "Why is the sky blue?", "max_tokens": 1, "stream": false}'  # one token: nothing to stream


async def raw_jetstream(url: str, n: int) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="RAW", subjects=["raw.>"], retention=RetentionPolicy.WORK_QUEUE))
    sub = await js.pull_subscribe("raw.>", durable="raw")
    start = time.perf_counter()
    acks = [await js.publish_async("raw.x", BODY) for _ in range(n)]
    await asyncio.gather(*acks)
    done = 0
    while done < n:
        for msg in await sub.fetch(min(200, n - done), timeout=10):
            await msg.ack()
            done += 1
    elapsed = time.perf_counter() - start
    await nc.close()
    return n / elapsed


async def publish_requests(nc: nats.NATS, model: str, n: int, inbox: str) -> None:
    js = nc.jetstream()
    deadline = str(now_ms() + 3_000_000)
    futures = []
    for i in range(n):
        headers = {"Iris-Reply-To": inbox, "Iris-Deadline": deadline, "Nats-Msg-Id": f"b{time.time_ns()}-{i}"}
        futures.append(await js.publish_async(request_subject(model, "default"), BODY, headers=headers))
    await asyncio.gather(*futures)


async def wait_indexed(nc: nats.NATS, model: str, n: int, timeout_s: float) -> None:
    """Until the broker's stats count n requests of `model` queued or running: all of them are indexed.
    (Counting their `QueueUpdate`s instead would depend on this client keeping up with 100,000 of them.)"""
    indexed = asyncio.Event()
    seen = 0

    async def on_stats(msg: Any) -> None:
        nonlocal seen
        stats = broker_stats_decoder.decode(msg.data)
        seen = sum(w.queued + w.running for w in stats.workloads if w.model == model)
        if seen >= n:
            indexed.set()

    sub = await nc.subscribe(BROKER_STATS_SUBJECT, cb=on_stats)
    try:
        await asyncio.wait_for(indexed.wait(), timeout_s)
    except TimeoutError:
        raise TimeoutError(f"the broker indexed {seen} of {n} requests within {timeout_s} s") from None
    finally:
        await sub.unsubscribe()


async def backlog_dispatch(client: Client, model: str, n: int) -> float:
    """Tickets take every slot, n requests queue behind them, the tickets go: dispatches per second."""
    release, all_held = asyncio.Event(), asyncio.Event()
    held = 0
    tickets = FAST_SLOTS * FAST_WORKERS

    async def hold() -> None:
        nonlocal held
        async with client.admit(model=model, deadline_s=600):
            held += 1
            if held == tickets:
                all_held.set()
            await release.wait()

    holders = [asyncio.ensure_future(hold()) for _ in range(tickets)]
    await asyncio.wait_for(all_held.wait(), 60)
    inbox = client.nc.new_inbox()
    queued = await ReplyCounter(client.nc, inbox, "queued", n).subscribe()
    results = await ReplyCounter(client.nc, inbox, "result", n).subscribe()
    await publish_requests(client.nc, model, n, inbox)
    await queued.wait(600)  # every request is in the broker's index
    release.set()
    await asyncio.gather(*holders)
    first, last = await results.wait(600)
    return round((n - 1) / (last - first), 1)


def _fake_worker(url: str, model: str, slots: int, worker_id: str, log: Path, *extra: str) -> Process:
    args = ["--engine", "fake", "--model-name", model, "--slots", str(slots), "--worker-id", worker_id, *extra]
    return spawn("gpu_worker", url, args, log)


async def _end_to_end(client: Client, n_dispatch: int) -> float:
    """Requests/s from the first publish to the last final reply, the publishing included."""
    inbox = client.nc.new_inbox()
    results = await ReplyCounter(client.nc, inbox, "result", n_dispatch).subscribe()
    start = time.perf_counter()
    await publish_requests(client.nc, "fast", n_dispatch, inbox)
    return round(n_dispatch / ((await results.wait(600))[1] - start), 1)


async def _dispatch_phases(client: Client, n_dispatch: int, report: dict[str, Any]) -> None:
    """End to end with the publishing included, then dispatch from a standing backlog (median of rounds)."""
    report["iris_end_to_end_per_s"] = await _end_to_end(client, n_dispatch)
    rounds = [await backlog_dispatch(client, "fast", n_dispatch) for _ in range(BACKLOG_ROUNDS)]
    report["iris_dispatch_rounds_per_s"] = rounds
    report["iris_dispatch_per_s"] = statistics.median(rounds)


async def _both_arms(
    client: Client,
    procs: list[Process],
    n_dispatch: int,
    report: dict[str, Any],
    brokers: dict[str, Callable[[], Process]],
) -> None:
    """Preemption off and on, round by round in turn (a broker taking over for each), so the machine's
    drift within the run falls on both alike; `report["preemption_on"]` holds the second arm's figures."""
    arms = {"off": report, "on": report.setdefault("preemption_on", {})}
    for block in arms.values():
        block["iris_dispatch_rounds_per_s"] = []
    for round_ in range(BACKLOG_ROUNDS):
        for arm, block in arms.items():
            if round_ or arm != "off":  # the first broker is the "off" one
                await _take_over(client, procs, brokers[arm])
            if not round_:
                block["iris_end_to_end_per_s"] = await _end_to_end(client, n_dispatch)
            block["iris_dispatch_rounds_per_s"].append(await backlog_dispatch(client, "fast", n_dispatch))
    for block in arms.values():
        block["iris_dispatch_per_s"] = statistics.median(block["iris_dispatch_rounds_per_s"])


async def _take_over(client: Client, procs: list[Process], restart: Callable[[], Process]) -> None:
    """The broker (procs[0]) stops and a fresh one, as `restart` starts it, leads instead."""
    procs[0].terminate()
    procs[0].wait(timeout=30)
    procs[0] = restart()
    await wait_for_model(client, "slow", procs)


async def _index_memory(
    client: Client,
    procs: list[Process],
    restart: Callable[[], Process],
    n_waiting: int,
    report: dict[str, Any],
) -> None:
    """The index's own cost, on a broker that did nothing else: a fresh one takes over, then n wait."""
    await _take_over(client, procs, restart)
    broker_pid = procs[0].pid
    report["broker_rss_idle_mb"] = round(rss_mb(broker_pid), 1)
    await publish_requests(client.nc, "slow", n_waiting, client.nc.new_inbox())
    await wait_indexed(client.nc, "slow", n_waiting, 900)
    report["waiting_requests"] = n_waiting
    report["broker_rss_with_waiting_mb"] = round(rss_mb(broker_pid), 1)


async def run_scheduler_bench(n_dispatch: int, n_waiting: int, out: Path, preemption: str = "off") -> dict[str, Any]:
    report: dict[str, Any] = {
        "bench": "scheduler",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform()},
        "preemption": preemption,
    }
    with tempfile.TemporaryDirectory(prefix="iris-sched-") as tmp:
        workdir = Path(tmp)
        server = NatsServer(workdir / "nats").start()
        procs: list[Process] = []
        try:
            report["raw_jetstream_msgs_per_s"] = round(await raw_jetstream(server.url, n_dispatch), 1)
            # max_concurrency = the fast workers' slots: the backlog phase's tickets fill the model exactly
            limit = ["--max-concurrency", str(FAST_SLOTS * FAST_WORKERS)]
            preempt = [*limit, "--preempt-ratio", str(PREEMPT_RATIO)]
            procs.append(spawn("broker", server.url, preempt if preemption == "on" else limit, workdir / "broker.log"))
            for i in range(FAST_WORKERS):
                procs.append(_fake_worker(server.url, "fast", FAST_SLOTS, f"fast{i}", workdir / f"w{i}.log"))
            procs.append(_fake_worker(server.url, "slow", 1, "slow", workdir / "slow.log", "--fake-tps", "0.01"))
            async with await Client.connect(server.url) as client:
                await wait_for_model(client, "fast", procs)
                await wait_for_model(client, "slow", procs)
                if preemption == "both":
                    terms = iter(range(1, 100))
                    brokers = {
                        arm: lambda args=args: spawn("broker", server.url, args, workdir / f"broker-{next(terms)}.log")
                        for arm, args in (("off", limit), ("on", preempt))
                    }
                    await _both_arms(client, procs, n_dispatch, report, brokers)
                else:
                    await _dispatch_phases(client, n_dispatch, report)
                report["broker_rss_after_dispatch_mb"] = round(rss_mb(procs[0].pid), 1)
                restart = functools.partial(spawn, "broker", server.url, limit, workdir / "broker-2.log")
                await _index_memory(client, procs, restart, n_waiting, report)
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
            server.stop()
    report["targets"] = {"dispatch_per_s": TARGET_DISPATCH_PER_S, "rss_mb": TARGET_RSS_MB}
    _print(report, n_waiting)
    return save_report(report, out)


def _print(report: dict[str, Any], n_waiting: int) -> None:
    print(f"raw JetStream publish→fetch→ack:   {report['raw_jetstream_msgs_per_s']:>10.1f} msgs/s")
    rounds_text = ", ".join(f"{r:.0f}" for r in report["iris_dispatch_rounds_per_s"])
    print(
        f"Iris dispatch from a backlog:       {report['iris_dispatch_per_s']:>10.1f} requests/s, median of "
        f"{rounds_text} "
        f"(target >= {TARGET_DISPATCH_PER_S}; zero-time workers)"
    )
    print(f"Iris end to end, publish included: {report['iris_end_to_end_per_s']:>10.1f} requests/s")
    if "preemption_on" in report:
        on = report["preemption_on"]
        ratio = on["iris_dispatch_per_s"] / report["iris_dispatch_per_s"]
        rounds_on = ", ".join(f"{r:.0f}" for r in on["iris_dispatch_rounds_per_s"])
        print(f"  with preemption on: dispatch {on['iris_dispatch_per_s']:>10.1f} requests/s ({rounds_on}), "
              f"{ratio:.3f}x off; end to end {on['iris_end_to_end_per_s']:.1f} requests/s")  # fmt: skip
    print(f"broker RSS after the dispatch phases: {report['broker_rss_after_dispatch_mb']} MB")
    print(
        f"fresh broker RSS idle / {n_waiting} waiting: {report['broker_rss_idle_mb']} MB / "
        f"{report['broker_rss_with_waiting_mb']} MB (target <= {TARGET_RSS_MB} MB)"
    )
