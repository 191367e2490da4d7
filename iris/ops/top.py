"""`iris top`: a live terminal view of an Iris deployment, read from NATS alone.

It listens to the broker's `BrokerStats` (`iris.broker.stats`: per workload queued, running, share of
tokens vs target share, p50/p95 queue wait, recent rejections) and to worker heartbeats (slots, busy
slots, tokens/s, suspended leases of its bound, suspensions and resumes kept/restored/re-prefilled with
their mean latency). Rendering is a pure function of what was heard and the time, so it is testable.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import datetime

import msgspec
from nats.aio.msg import Msg
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from runtime.connection import connect
from schemas.messages import BrokerStats, Heartbeat, broker_stats_decoder, heartbeat_decoder
from schemas.subjects import BROKER_STATS_SUBJECT, HEARTBEAT_FILTER

WORKER_FORGET_S = 10.0


@dataclass
class TopState:
    stats: BrokerStats | None = None
    stats_at_s: float = 0.0
    workers: dict[str, tuple[float, Heartbeat]] = field(default_factory=dict)

    async def on_stats(self, msg: Msg) -> None:
        try:
            self.stats, self.stats_at_s = broker_stats_decoder.decode(msg.data), time.monotonic()
        except msgspec.DecodeError:
            return

    async def on_heartbeat(self, msg: Msg) -> None:
        try:
            beat = heartbeat_decoder.decode(msg.data)
        except msgspec.DecodeError:
            return
        self.workers[beat.worker_id] = (time.monotonic(), beat)


def _share_cell(share: float, target: float) -> Text:
    text = f"{share:.0%}/{target:.0%}"
    if not target:
        return Text(text, style="dim")
    off = abs(share - target) / target
    return Text(text, style="green" if off <= 0.05 else "yellow" if off <= 0.25 else "red")


def workloads_table(stats: BrokerStats | None) -> Table:
    window = f"queue wait p50/p95 and token share over the last {stats.window_s:.0f} s" if stats else "no stats yet"
    table = Table(title=f"Workloads ({window})", title_justify="left")
    columns = ("model", "workload", "wt", "queue", "run", "share/tgt", "p50", "p95", "started")
    for name in columns:
        table.add_column(name, justify="left" if name in ("model", "workload") else "right", no_wrap=True)
    for row in stats.workloads if stats else []:
        table.add_row(
            row.model,
            row.workload,
            f"{row.weight:g}",
            str(row.queued),
            str(row.running),
            _share_cell(row.share, row.target_share),
            f"{row.wait_p50_s:.2f}s",
            f"{row.wait_p95_s:.2f}s",
            str(row.started),
        )
    return table


def workers_table(workers: dict[str, tuple[float, Heartbeat]], now_s: float) -> Table:
    table = Table(title="Workers", title_justify="left")
    for name in ("worker", "model", "slots", "busy", "used", "tokens/s", "device", "state"):
        table.add_column(
            name, justify="left" if name in ("worker", "model", "device", "state") else "right", no_wrap=True
        )
    for worker_id, (seen_s, beat) in sorted(workers.items()):
        if now_s - seen_s > WORKER_FORGET_S:
            continue
        busy = beat.slots - beat.free_slots
        state = "draining" if beat.draining else ("silent" if now_s - seen_s > 3 else "ok")
        table.add_row(
            worker_id,
            beat.model,
            str(beat.slots),
            str(busy),
            f"{busy / beat.slots:.0%}" if beat.slots else "-",
            f"{beat.tokens_per_s:.1f}",
            "GPU" if beat.gpu else "CPU",
            state,
        )
    return table


def suspensions_table(workers: dict[str, tuple[float, Heartbeat]], now_s: float) -> Table | None:
    """Per worker that can suspend: suspended now of its bound, suspensions so far, resumes by mode
    (KV cells kept, state restored from host memory, re-prefilled) and their mean latency."""
    beats = [(w, b) for w, (seen_s, b) in sorted(workers.items()) if now_s - seen_s <= WORKER_FORGET_S]
    beats = [(w, b) for w, b in beats if b.max_suspended or b.suspensions]
    if not beats:
        return None
    table = Table(title="Suspensions (priority preemption)", title_justify="left")
    for name in ("worker", "now", "total", "kept", "restored", "reprefilled", "resume"):
        table.add_column(name, justify="left" if name == "worker" else "right", no_wrap=True)
    for worker_id, beat in beats:
        resumes = [str(beat.resumes.get(mode, 0)) for mode in ("kept", "restored", "reprefilled")]
        latency = f"{beat.resume_ms:.1f}ms" if beat.resumes else "-"
        table.add_row(
            worker_id, f"{len(beat.suspended)}/{beat.max_suspended}", str(beat.suspensions), *resumes, latency
        )
    return table


def rejections_table(stats: BrokerStats | None) -> Table:
    table = Table(title="Recent rejections", title_justify="left")
    for name in ("time", "model", "workload", "code", "why"):
        table.add_column(name, no_wrap=name != "why")
    for note in reversed(stats.rejections[-8:] if stats else []):
        at = datetime.fromtimestamp(note.at_ms / 1000).strftime("%H:%M:%S")
        table.add_row(at, note.model, note.workload, Text(note.code, style="red"), note.message)
    return table


def render(state: TopState, url: str, now_s: float) -> Group:
    stats = state.stats
    if stats is None:
        header = Text(f"iris top · {url} · no broker stats yet (is a broker running?)", style="bold yellow")
    else:
        age = now_s - state.stats_at_s
        header = Text(f"iris top · {url} · policy {stats.policy} · stats {age:.1f} s old", style="bold")
    suspensions = suspensions_table(state.workers, now_s)
    tables = [workloads_table(stats), workers_table(state.workers, now_s), *([suspensions] if suspensions else [])]
    return Group(header, *tables, rejections_table(stats))


async def run_top(url: str, refresh_s: float, once: bool) -> None:
    state = TopState()
    nc = await connect(url, "iris-top")
    try:
        await nc.subscribe(BROKER_STATS_SUBJECT, cb=state.on_stats)
        await nc.subscribe(HEARTBEAT_FILTER, cb=state.on_heartbeat)
        if once:
            await asyncio.sleep(2.5)  # one stats period and one heartbeat round, then print
            Console().print(render(state, url, time.monotonic()))
            return
        with Live(render(state, url, time.monotonic()), refresh_per_second=4, screen=True) as live:
            while True:
                await asyncio.sleep(refresh_s)
                live.update(render(state, url, time.monotonic()))
    finally:
        await nc.close()
