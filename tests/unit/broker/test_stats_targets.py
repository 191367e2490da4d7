"""The target share `iris top` and `/metrics` show follows the scheduling formula: weight x the priority a
workload serves, over the sum of it among the model's busy workloads (pure, no server)."""

from __future__ import annotations

from broker.core.stats import StatsWindow


def test_target_share_is_weight_times_priority() -> None:
    load = {("m", "paid"): (3, 1, 5), ("m", "open-source"): (4, 1, 1), ("m", "idle"): (0, 0, 1)}
    weights = {"paid": 1.0, "open-source": 1.0, "idle": 3.0}
    stats = StatsWindow(60.0).snapshot(1_000, load, lambda w: weights[w])
    targets = {row.workload: row.target_share for row in stats.workloads}
    assert targets == {"paid": round(5 / 6, 4), "open-source": round(1 / 6, 4)}
    assert {row.workload: row.priority for row in stats.workloads} == {"paid": 5, "open-source": 1}
