"""`iris bench scale --core`: what one decision of the pure scheduler costs with 1, 1,000 and 10,000
workers, without NATS: CPU seconds (`time.process_time`, so other load on the machine barely counts) per
dispatched lease and its end, per heartbeat and per tick, with a backlog waiting. The network bench
(`iris.bench.scale`) measures the whole broker; this one isolates the decisions the indexes are for.
"""

from __future__ import annotations

import time
from typing import Any

from broker.core.limits import SchedulerLimits
from broker.core.queue import WaitingRequest
from broker.core.scheduler import Scheduler
from schemas.messages import Heartbeat, LeaseDone

T0_MS = 1_000_000_000
BEATS_TIMED = 2_000
TICKS_TIMED = 20


def _ready(workers: int, slots: int, waiting: int) -> tuple[Scheduler, int]:
    scheduler = Scheduler(SchedulerLimits(), T0_MS)
    now = T0_MS + 10_000
    for i in range(workers):
        scheduler.heartbeat(Heartbeat(f"w{i}", "m", slots, slots, [], 0.0, now), now)
    for seq in range(1, waiting + 1):
        request = WaitingRequest(seq, f"r{seq}", "m", "default", "_INBOX.x", now + 10**8, now, prompt_tokens_est=17)
        scheduler.enqueue(request, now)
    return scheduler, now


def core_costs(workers: int, slots: int, waiting: int) -> dict[str, Any]:
    """Microseconds of CPU per lease (dispatched, then ended in its own `LeasesDone`), per heartbeat, per tick."""
    scheduler, now = _ready(workers, slots, waiting)
    done = 0
    start = time.process_time()
    while done < waiting // 2:
        decisions = scheduler.dispatch(now)
        for lease in decisions.offers:
            scheduler.leases_done([LeaseDone(lease.stream_seq, "m", "default", 1, 1, True, 0.1)], now)
        done += len(decisions.offers)
    per_lease = (time.process_time() - start) / done
    beats = min(workers * 4, BEATS_TIMED)
    start = time.process_time()
    for i in range(beats):
        worker = f"w{i % workers}"
        scheduler.heartbeat(Heartbeat(worker, "m", slots, slots, [], 0.0, now), now)
    per_beat = (time.process_time() - start) / beats
    start = time.process_time()
    for _ in range(TICKS_TIMED):
        scheduler.tick(now)
    per_tick = (time.process_time() - start) / TICKS_TIMED
    return {
        "workers": workers,
        "slots": slots,
        "waiting": waiting,
        "us_per_lease": round(per_lease * 1e6, 1),
        "us_per_heartbeat": round(per_beat * 1e6, 1),
        "us_per_tick": round(per_tick * 1e6, 1),
    }


def run_core_bench(fleets: list[int], slots: int, single_slots: int, waiting: int) -> list[dict[str, Any]]:
    rows = [core_costs(1, single_slots, waiting)] + [core_costs(n, slots, waiting) for n in fleets]
    for row in rows:
        ratio = row["us_per_lease"] / rows[0]["us_per_lease"]
        print(
            f"{row['workers']:>6} workers x {row['slots']}: {row['us_per_lease']:>8.1f} us CPU per lease "
            f"({ratio:.2f}x the single worker), {row['us_per_heartbeat']:.1f} us per heartbeat, "
            f"{row['us_per_tick']:.1f} us per tick",
            flush=True,
        )
    return rows
