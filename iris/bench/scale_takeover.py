"""`iris bench scale --takeover`: a standby elected with a deep backlog serves it in fair order at once.

Two broker processes (weights 1:2:3:4 over four workloads) and a fleet of simulated workers that drain, so
`waiting` requests build up: published one workload after the other, so that an index filling in stream
order would hand its first leases to the first workload. The leader is killed (SIGKILL) once it has
indexed them all and the fleet starts to serve; figures: seconds from the kill to the election (the key in
`IRIS_BROKERS` names the standby), from the election to the new leader's stats counting the whole
backlog (queued + running + done: its index is complete), and each workload's share of the first 1,000
leases the new leader handed out against its weight's share.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import nats

from iris.bench.scale import LEADER_TTL_S, MODEL, WORKER_TIMEOUT_S, wait_leading
from iris.bench.scale_fleet import SimFleet, publish_backlog
from iris.bench.scheduler import wait_indexed
from iris.launch.nats_server import NatsServer
from iris.launch.processes import Process, kill_all, spawn
from schemas.messages import broker_stats_decoder
from schemas.subjects import BROKER_BUCKET, BROKER_STATS_SUBJECT, LEADER_KEY

WEIGHTS = {"w1": 1.0, "w2": 2.0, "w3": 3.0, "w4": 4.0}
# What the simulated workers report each answer took: with it stated, every turn is charged what it costs,
# and the shares of the first leases are the weights' (an estimate far above it is refunded at most to
# the level's floor, which evens shares out while estimates are learnt).
COST_TOKENS = 2
FIRST = 1_000  # leases whose shares are judged
TARGET_SHARE_ERROR, TARGET_COMPLETE_S = 0.05, 5.0


async def _elected(nc: nats.NATS, broker_id: str, timeout_s: float = 30.0) -> float:
    """When the leader key first names `broker_id` (perf_counter)."""
    kv = await nc.jetstream().key_value(BROKER_BUCKET)
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            entry = await kv.get(LEADER_KEY)
            if entry.value and entry.value.decode() == broker_id:
                return time.perf_counter()
        except Exception:  # no leader right now
            pass
        await asyncio.sleep(0.02)
    raise TimeoutError(f"broker {broker_id} not elected within {timeout_s} s")


async def _leader(nc: nats.NATS) -> str:
    entry = await (await nc.jetstream().key_value(BROKER_BUCKET)).get(LEADER_KEY)
    return (entry.value or b"").decode()


async def _index_complete(nc: nats.NATS, n: int, fleet: SimFleet, timeout_s: float = 120.0) -> float:
    """When the leader's stats first count the whole backlog (perf_counter of that stats message); called once
    the standby is elected, so every stats message heard is the new leader's."""
    done = asyncio.get_running_loop().create_future()
    seen: dict[str, int] = {}

    async def on_stats(msg: Any) -> None:
        stats = broker_stats_decoder.decode(msg.data)
        known = sum(w.queued + w.running for w in stats.workloads if w.model == MODEL) + fleet.completed
        seen["last"] = known
        if known >= n and not done.done():
            done.set_result(time.perf_counter())

    sub = await nc.subscribe(BROKER_STATS_SUBJECT, cb=on_stats)
    try:
        return float(await asyncio.wait_for(done, timeout_s))
    except TimeoutError:
        raise TimeoutError(f"the new leader's stats never counted {n} requests (last: {seen})") from None
    finally:
        await sub.unsubscribe()


async def _publish_by_workload(nc: nats.NATS, n: int) -> None:
    for workload in WEIGHTS:
        await publish_backlog(nc, MODEL, n // len(WEIGHTS), workload, COST_TOKENS)


async def run_takeover(
    workdir: Path, waiting: int, workers: int, slots: int, read_ahead: bool = True
) -> dict[str, Any]:
    """`read_ahead` off: the standby holds no index and replays the stream once elected."""
    server = NatsServer(workdir / "nats-takeover").start()
    config = workdir / "takeover.toml"
    weights = ", ".join(f"{k} = {w}" for k, w in WEIGHTS.items())
    config.write_text(f"[broker]\nworkload_weights = {{ {weights} }}\nmax_msgs = {2 * waiting + 10_000}\n")
    # As in `iris bench scale`: at the lowest priority on a loaded machine, late renewals must not move the
    # lead while the backlog builds, nor late heartbeats lose workers.
    args = ["--config", str(config), "--leader-ttl", str(LEADER_TTL_S), "--worker-timeout", str(WORKER_TIMEOUT_S)]
    args += ["--offer-timeout", str(WORKER_TIMEOUT_S), "--read-ahead" if read_ahead else "--no-read-ahead"]
    procs: list[Process] = []
    fleet = SimFleet(server.url, MODEL, workers, slots, record_first=FIRST)
    try:
        nc = await nats.connect(server.url, name="iris-bench-takeover")
        procs.append(spawn("broker", server.url, [*args, "--broker-id", "a"], workdir / "a.log"))
        await wait_leading(nc, procs[0])
        procs.append(spawn("broker", server.url, [*args, "--broker-id", "b"], workdir / "b.log"))
        await fleet.start()
        await asyncio.sleep(3.0)  # the fleet heard, the standby reading along
        await _publish_by_workload(nc, waiting)
        await wait_indexed(nc, MODEL, waiting, 900)
        await asyncio.sleep(3.0)  # the standby reads as fast as the leader does
        leader = await _leader(nc)  # a loaded machine may have moved the lead already: kill whoever leads
        procs[0 if leader == "a" else 1].kill()
        killed = time.perf_counter()
        fleet.serve()
        elected = await _elected(nc, "b" if leader == "a" else "a")
        indexed = await _index_complete(nc, waiting, fleet)
        await _until_recorded(fleet)
        await nc.close()
    finally:
        await fleet.stop()
        kill_all(procs)
        server.stop()
    return {"read_ahead": read_ahead, **_figures(waiting, fleet.first_workloads, elected - killed, indexed - elected)}


async def _until_recorded(fleet: SimFleet, timeout_s: float = 120.0) -> None:
    end = time.monotonic() + timeout_s
    while len(fleet.first_workloads) < FIRST:
        if time.monotonic() > end:
            raise TimeoutError(f"only {len(fleet.first_workloads)} leases handed out within {timeout_s} s")
        await asyncio.sleep(0.05)


def _figures(waiting: int, first: list[str], election_s: float, complete_s: float) -> dict[str, Any]:
    total = sum(WEIGHTS.values())
    shares = {
        w: {"share": round(first.count(w) / len(first), 4), "target": round(WEIGHTS[w] / total, 4)} for w in WEIGHTS
    }
    worst = max(abs(s["share"] / s["target"] - 1) for s in shares.values())
    return {
        "waiting": waiting,
        "kill_to_election_s": round(election_s, 3),
        "election_to_index_complete_s": round(complete_s, 3),
        "first_leases": len(first),
        "shares_of_first_leases": shares,
        "worst_relative_share_error": round(worst, 4),
        "checks": {
            "share_error": {
                "value": round(worst, 4),
                "target_max": TARGET_SHARE_ERROR,
                "met": worst <= TARGET_SHARE_ERROR,
            },
            "index_complete_s": {
                "value": round(complete_s, 3),
                "target_max": TARGET_COMPLETE_S,
                "met": complete_s <= TARGET_COMPLETE_S,
            },
        },
    }


def print_takeover(figures: dict[str, Any]) -> None:
    shares = ", ".join(
        f"{w} {100 * s['share']:.1f}% (target {100 * s['target']:.0f}%)"
        for w, s in figures["shares_of_first_leases"].items()
    )
    print(
        f"takeover ({'read ahead' if figures['read_ahead'] else 'replay'}) with {figures['waiting']} waiting: "
        f"elected {figures['kill_to_election_s']:.2f} s after the kill, "
        f"index complete {figures['election_to_index_complete_s']:.2f} s after the election (stats every 1 s); "
        f"first {figures['first_leases']} leases: {shares}; "
        f"worst error {100 * figures['worst_relative_share_error']:.1f}%"
    )
