"""The broker's /metrics under invented workload names: capped while they are used, and gone (label places
freed) once their flows have been idle for `idle_s` (`broker.metrics`)."""

from __future__ import annotations

from broker.metrics import BrokerMetrics
from runtime.clock import now_ms
from schemas.metric_labels import MAX_WORKLOADS_PER_MODEL, OTHER
from tests.unit.builders import request


def series(metrics: BrokerMetrics) -> set[tuple[str, str]]:
    """(model, workload) of every sample with both labels."""
    return {
        (sample.labels["model"], sample.labels["workload"])
        for family in metrics.registry.collect()
        for sample in family.samples
        if "workload" in sample.labels
    }


def test_idle_flows_leave_metrics_and_free_their_labels() -> None:
    metrics = BrokerMetrics(idle_s=5)
    metrics.labels.serve("m")
    metrics.queued(request(100, workload="paid"))
    for i in range(40):
        metrics.rejected(request(i, workload=f"invented{i}"), "queue_full", "full", now_ms())
    shown = series(metrics)
    assert len(shown) == MAX_WORKLOADS_PER_MODEL + 1  # the cap, and `_other` for the rest
    assert ("m", OTHER) in shown

    busy = {("m", "paid"): (1, 0, 1)}  # one request of `paid` still waits
    metrics.snapshot(now_ms() + 6_000, busy, lambda workload: 1.0)

    assert series(metrics) == {("m", "paid")}
    assert metrics.labels.flow("m", "new") == ("m", "new")  # a freed place, not `_other`


def test_flows_active_within_idle_s_keep_their_series() -> None:
    metrics = BrokerMetrics(idle_s=5)
    metrics.labels.serve("m")
    metrics.rejected(request(1, workload="a"), "queue_full", "full", now_ms())
    metrics.snapshot(now_ms() + 1_000, {}, lambda workload: 1.0)
    assert ("m", "a") in series(metrics)
