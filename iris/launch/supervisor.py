"""The process manager behind `iris up`: starts each service as its own process (`iris.launch.processes`),
restarts one that exits (with backoff, and a line on the console), and stops them all in order within a
time budget.

A child that exits is started again after `RESTART_MIN_S`, doubling up to `RESTART_MAX_S` while it keeps
dying young, back to the minimum once it ran `HEALTHY_S`. Children are started `supervised`: in their
own sessions (the terminal's Ctrl-C reaches `iris up` only, which stops them in order), with SIGTERM
should `iris up` itself die, so none is left behind. Their output goes to one log file each.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from iris.launch import processes
from iris.launch.processes import Service

RESTART_MIN_S = 0.5
RESTART_MAX_S = 10.0
HEALTHY_S = 30.0


def next_backoff_s(previous_s: float, ran_s: float) -> float:
    """Pure: the wait before the next start of a child that ran `ran_s` and then exited."""
    if ran_s >= HEALTHY_S or previous_s <= 0:
        return RESTART_MIN_S
    return min(RESTART_MAX_S, previous_s * 2)


@dataclass
class Child:
    name: str
    service: Callable[[], Service]  # built at every start: a port it had may have been taken meanwhile
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    started_s: float = 0.0
    backoff_s: float = 0.0
    restart_at_s: float | None = None  # exited: started again at this time
    restarts: int = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Supervisor:
    def __init__(self, console: Callable[[str], None]) -> None:
        self.console = console
        self.children: dict[str, Child] = {}

    def add(self, name: str, service: Callable[[], Service], log_path: Path) -> None:
        child = self.children[name] = Child(name, service, log_path)
        self._start(child)

    def _start(self, child: Child) -> None:
        child.process = processes.start(child.service(), child.log_path, supervised=True)
        child.started_s = time.monotonic()
        child.restart_at_s = None

    def exited(self) -> list[Child]:
        """Children that exited and are not yet due to start again."""
        return [c for c in self.children.values() if c.restart_at_s is None and not c.running]

    def watch(self) -> None:
        """Once per supervision round: schedule a restart for each child that exited, start those due."""
        now_s = time.monotonic()
        for child in self.exited():
            assert child.process is not None
            child.backoff_s = next_backoff_s(child.backoff_s, now_s - child.started_s)
            child.restart_at_s = now_s + child.backoff_s
            self.console(
                f"iris: {child.name} exited with code {child.process.returncode}; restarting in "
                f"{child.backoff_s:.1f} s (log: {child.log_path})"
            )
        for child in self.children.values():
            if child.restart_at_s is not None and now_s >= child.restart_at_s:
                self._start(child)
                child.restarts += 1
                assert child.process is not None
                self.console(f"iris: {child.name} restarted (pid {child.process.pid}, restart {child.restarts})")

    async def stop(self, stages: Sequence[Sequence[str]], budget_s: float, hurry: asyncio.Event) -> None:
        """SIGTERM stage by stage, each once the one before has exited, all within `budget_s`; SIGKILL
        what is left then, or at once when `hurry` is set (a second Ctrl-C)."""
        end_s = time.monotonic() + budget_s
        for stage in stages:
            children = [self.children[name] for name in stage if name in self.children]
            for child in children:
                child.restart_at_s = None
                if child.running:
                    assert child.process is not None
                    child.process.send_signal(signal.SIGTERM)
            while any(c.running for c in children) and time.monotonic() < end_s and not hurry.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(hurry.wait(), 0.05)  # polls the children; wakes on a second Ctrl-C
        late = [c.name for c in self.children.values() if c.running]
        if late and not hurry.is_set():
            self.console(f"iris: {', '.join(late)} did not stop within {budget_s:.0f} s, killing")
        self.kill()

    def kill(self) -> None:
        """SIGKILL every child still running (a second Ctrl-C, an overrun budget) and reap it."""
        for child in self.children.values():
            child.restart_at_s = None
            if child.running:
                assert child.process is not None
                child.process.kill()
        for child in self.children.values():
            if child.process is not None:
                child.process.wait()
