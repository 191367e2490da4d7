"""The heartbeat's tokens/s: aggregate over busy time, so concurrent sequences add up."""

from __future__ import annotations

import pytest

from gpu_worker.throughput import ThroughputMeter, busy_s


def test_busy_time_is_the_union_of_intervals() -> None:
    assert busy_s([]) == 0
    assert busy_s([(0, 2), (1, 3), (5, 6)]) == pytest.approx(4)
    assert busy_s([(0, 10), (2, 3)]) == pytest.approx(10)


def test_concurrent_runs_add_up() -> None:
    meter = ThroughputMeter(window_s=30)
    for _ in range(4):
        meter.record(100.0, 102.0, 40)  # four sequences batched together, 20 tokens/s each
    assert meter.tokens_per_s(now_s=102.0) == pytest.approx(80)


def test_idle_time_does_not_dilute_and_last_figure_stays() -> None:
    meter = ThroughputMeter(window_s=10)
    meter.record(0.0, 1.0, 50)
    meter.record(5.0, 6.0, 50)
    assert meter.tokens_per_s(now_s=6.0) == pytest.approx(50)
    assert meter.tokens_per_s(now_s=100.0) == pytest.approx(50)  # idle since: the last measurement stays
    meter.record(100.0, 101.0, 10)
    assert meter.tokens_per_s(now_s=101.0) == pytest.approx(10)  # old runs left the window


def test_runs_without_tokens_do_not_count() -> None:
    meter = ThroughputMeter()
    meter.record(0.0, 1.0, 0)
    assert meter.tokens_per_s(now_s=1.0) == 0
