"""`iris top`'s worker rows show suspended leases against the bound, suspensions, and resumes by mode."""

from __future__ import annotations

from rich.console import Console

from iris.ops.top import suspensions_table
from schemas.messages import Heartbeat


def test_worker_row_shows_suspension_and_resumes() -> None:
    beat = Heartbeat(
        "w1",
        "m",
        2,
        1,
        [3, 4],
        12.5,
        0,
        suspended=[4],
        max_suspended=2,
        suspensions=5,
        resumes={"kept": 3, "restored": 1},
        resume_ms=2.4,
    )
    console = Console(width=80, record=True)
    console.print(suspensions_table({"w1": (100.0, beat)}, 100.0))
    row = next(line for line in console.export_text().splitlines() if "w1" in line)
    assert row.split("│")[2:8] == [" 1/2 ", "     5 ", "    3 ", "        1 ", "           0 ", "  2.4ms "]


def test_no_suspension_table_for_workers_that_cannot_suspend() -> None:
    beat = Heartbeat("w1", "m", 2, 1, [3], 12.5, 0)
    assert suspensions_table({"w1": (100.0, beat)}, 100.0) is None
