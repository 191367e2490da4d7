"""Suspend and resume orders for this worker's leases (`LeaseControl` on `iris.worker.<id>.control`).

A suspended lease stays this worker's (its heartbeat still lists it running, plus in `suspended`), but its
engine slot is free: the answer to a suspend order is sent once each lease has really left the decode
batch, so the leader can hand the slot on at once. A resume takes a free slot back; a lease that cannot be
resumed here (no free slot, ended meanwhile) is refused and the leader tries again later. The bound on
suspended leases is the engine's `max_suspended`. Stops (cancel, deadline) reach a suspended lease as
usual: it ends with what it had produced.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gpu_worker.engines.protocol import Resumed, StopSignal, Suspended
from gpu_worker.metrics import WorkerMetrics
from schemas.messages import Lease, LeaseControl, LeaseControlAnswer

SUSPEND_WAIT_S = 5.0  # a sequence leaves the batch within one decode step; past this the order is refused


@dataclass
class _Held:
    stop: StopSignal
    lease: Lease
    parked: asyncio.Event = field(default_factory=asyncio.Event)
    resume_asked_s: float = 0.0


class Suspensions:
    """The worker's suspended leases. `busy` is the worker's set of leases holding an engine slot."""

    def __init__(self, slots: int, max_suspended: int, busy: set[int], metrics: WorkerMetrics) -> None:
        self.slots, self.max_suspended = slots, max_suspended
        self.busy = busy
        self.metrics = metrics
        self.suspended: set[int] = set()
        self._held: dict[int, _Held] = {}
        self.suspensions = 0  # since the worker started, for its heartbeat
        self.resumes: dict[str, int] = {}
        self._resume_s_total = 0.0

    def track(self, lease: Lease, stop: StopSignal) -> Callable[[Suspended | Resumed], None]:
        """Register a running lease; the hook its runner calls with the engine's suspend events."""
        held = self._held[lease.stream_seq] = _Held(stop, lease)

        def hook(event: Suspended | Resumed) -> None:
            if isinstance(event, Suspended):
                held.parked.set()
                return
            held.parked.clear()
            waited_s = time.monotonic() - held.resume_asked_s if held.resume_asked_s else 0.0
            self.metrics.resumed(lease, event.mode, waited_s)
            self.resumes[event.mode] = self.resumes.get(event.mode, 0) + 1
            self._resume_s_total += waited_s

        return hook

    @property
    def resume_ms(self) -> float:
        count = sum(self.resumes.values())
        return round(self._resume_s_total * 1000 / count, 3) if count else 0.0

    def forget(self, seq: int) -> None:
        """The lease ended: a suspend order still waiting for it to park is answered now (refused)."""
        held = self._held.pop(seq, None)
        if held is not None:
            held.parked.set()
        self.suspended.discard(seq)

    async def apply(self, order: LeaseControl) -> LeaseControlAnswer:
        refused: list[int] = []
        resumed = [seq for seq in order.resume if self._resume(seq)]
        refused += [seq for seq in order.resume if seq not in resumed]
        asked = [seq for seq in order.suspend if self._ask_suspend(seq)]
        refused += [seq for seq in order.suspend if seq not in asked]
        suspended = await self._parked(asked)
        refused += [seq for seq in asked if seq not in suspended]
        reason = "not running here, at the suspended bound, or no free slot" if refused else ""
        return LeaseControlAnswer(suspended=suspended, resumed=resumed, refused=refused, reason=reason)

    def _ask_suspend(self, seq: int) -> bool:
        held = self._held.get(seq)
        if held is None or seq in self.suspended or seq not in self.busy or held.stop.reason is not None:
            return False
        if len(self.suspended) >= self.max_suspended:
            return False
        self.suspended.add(seq)  # counted at once: two orders in flight cannot pass the bound together
        held.stop.suspend()
        return True

    async def _parked(self, asked: list[int]) -> list[int]:
        """Wait until each asked lease left the batch; the slot of each one that did is free."""
        waits = {seq: asyncio.create_task(self._held[seq].parked.wait()) for seq in asked}
        if waits:
            await asyncio.wait(waits.values(), timeout=SUSPEND_WAIT_S)
        parked = []
        for seq, wait in waits.items():
            wait.cancel()
            held = self._held.get(seq)
            if held is not None and held.parked.is_set() and held.stop.reason is None:
                self.busy.discard(seq)
                self.metrics.suspended(held.lease)
                self.suspensions += 1
                parked.append(seq)
            else:  # it ended, or did not leave the batch in time: it keeps (or gave back) its slot
                self.suspended.discard(seq)
                if held is not None:
                    held.stop.resume()
        return parked

    def resume_all(self) -> None:
        """Draining: every suspended lease goes back to its engine, which runs it once a slot is free."""
        for seq in sorted(self.suspended):
            self.suspended.discard(seq)
            self.busy.add(seq)
            self._held[seq].stop.resume()

    def _resume(self, seq: int) -> bool:
        held = self._held.get(seq)
        if held is None or seq not in self.suspended or not held.parked.is_set():
            return False
        if len(self.busy) >= self.slots or held.stop.reason is not None:
            return False
        self.suspended.discard(seq)
        self.busy.add(seq)
        held.resume_asked_s = time.monotonic()
        held.stop.resume()
        return True
