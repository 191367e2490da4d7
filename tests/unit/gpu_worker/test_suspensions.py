"""The worker's answer to a suspend order: a lease that ends before it leaves the batch is refused at once,
not after the order's whole wait. The worker answers control orders one at a time, so a stalled answer
would hold up every suspend and resume after it (in the seed experiment a paid request then waited 5 s)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gpu_worker.engines.protocol import Resumed, StopSignal, Suspended
from gpu_worker.metrics import WorkerMetrics
from gpu_worker.suspension import SUSPEND_WAIT_S, Suspensions
from schemas.messages import Lease, LeaseControl

SEQ = 7
LEASE = Lease(SEQ, "r7", "m", "default", "_INBOX.r7", 10**13, 0, "w1", 1, 0)


def running_lease() -> tuple[Suspensions, StopSignal, Callable[[Suspended | Resumed], None]]:
    """A worker's suspensions with lease SEQ running; its stop signal and the hook its engine calls."""
    suspensions = Suspensions(slots=2, max_suspended=1, busy={SEQ}, metrics=WorkerMetrics())
    stop = StopSignal()
    return suspensions, stop, suspensions.track(LEASE, stop)


async def test_a_lease_that_ends_instead_of_parking_is_refused_at_once() -> None:
    suspensions, stop, _ = running_lease()
    answer = asyncio.create_task(suspensions.apply(LeaseControl(suspend=[SEQ])))
    await asyncio.sleep(0)  # the order is asked: the engine would park the sequence between two tokens
    assert stop.suspend_wanted
    suspensions.forget(SEQ)  # but its answer ended first (the runner's `finally`)
    done = await asyncio.wait_for(answer, timeout=SUSPEND_WAIT_S / 5)
    assert done.refused == [SEQ] and not done.suspended
    assert SEQ not in suspensions.suspended


async def test_a_lease_that_parks_is_suspended_and_its_slot_freed() -> None:
    suspensions, _, hook = running_lease()
    answer = asyncio.create_task(suspensions.apply(LeaseControl(suspend=[SEQ])))
    await asyncio.sleep(0)
    hook(Suspended())
    done = await asyncio.wait_for(answer, timeout=SUSPEND_WAIT_S / 5)
    assert done.suspended == [SEQ] and SEQ not in suspensions.busy
