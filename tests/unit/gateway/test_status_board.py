"""The status page's data: the broker's rows under the `/metrics` label rules, a bounded history, workers
from their heartbeats, and refusals whose reasons carry no value a client chose."""

from __future__ import annotations

import json

from gateway.http.status.board import HISTORY_S, MAX_POINTS, MAX_REJECTIONS, StatusBoard, redact
from gateway.metrics import Refusal
from schemas.messages import BrokerStats, Heartbeat, RejectionNote, WorkloadStats
from schemas.metric_labels import MAX_WORKLOADS_PER_MODEL, OTHER, UNSERVED


def row(workload: str, queued: int = 1, running: int = 0, model: str = "m", p95: float = 0.5) -> WorkloadStats:
    return WorkloadStats(model, workload, queued, running, 1.0, 0.5, 0.5, p95 / 2, p95, 3, priority=1)


def stats(sent_ms: int, rows: list[WorkloadStats], rejections: list[RejectionNote] | None = None) -> BrokerStats:
    return BrokerStats("b1", sent_ms, "wfq", 60.0, rows, rejections or [])


def test_rows_are_kept_per_served_model_and_bounded_workload() -> None:
    board = StatusBoard()
    made_up = [row(f"w{i}", queued=2, running=1) for i in range(MAX_WORKLOADS_PER_MODEL + 5)]
    board.on_stats(stats(1_000, [*made_up, row("x", model="nobody-serves")]), 1.0, ["m"])
    names = [(r["model"], r["workload"]) for r in board.rows]
    assert len(names) == MAX_WORKLOADS_PER_MODEL + 2  # 16 named, `_other`, and the unserved model
    other = next(r for r in board.rows if r["workload"] == OTHER)
    assert (other["queued"], other["running"]) == (2 * 5, 5)
    assert (UNSERVED, UNSERVED) in names and ("m", "w0") in names


def test_history_reaches_back_history_s_and_forgets_idle_flows() -> None:
    board = StatusBoard()
    for second in range(int(HISTORY_S) + 30):
        rows = [row("a", queued=second)] + ([row("b")] if second < 10 else [])
        board.on_stats(stats(second * 1000, rows), float(second), ["m"])
    flows = board.history_view()["flows"]
    assert set(flows) == {"m/a"}
    first_ms, last = flows["m/a"][0][0], flows["m/a"][-1]
    assert first_ms == (int(HISTORY_S) + 29 - int(HISTORY_S)) * 1000 and last[3] == int(HISTORY_S) + 29


def test_a_publisher_claiming_one_time_cannot_grow_the_history() -> None:
    board = StatusBoard()
    for _ in range(MAX_POINTS + 10):
        board.on_stats(stats(1_000, [row("a")]), 1.0, ["m"])
    assert len(board.history["m/a"]) == MAX_POINTS


def test_quoted_values_never_reach_the_page() -> None:
    assert (
        redact("workload 'alice-secret' already has 3 requests waiting")
        == "workload '…' already has 3 requests waiting"
    )
    assert redact('header Iris-User must match, got "bob"') == "header Iris-User must match, got '…'"
    board = StatusBoard()
    note = RejectionNote(5_000, "m", "paid", "queue_full", "workload 'paid' for user 'alice' is full")
    board.on_stats(stats(5_000, [row("paid")], [note]), 5.0, ["m"])
    refusal = Refusal(6_000, "openai", "/v1/chat/completions", 401, "unauthorized", "key 'sk-123' is invalid")
    snapshot = board.snapshot(6.0, 6_000, [], [refusal])
    text = json.dumps(snapshot)
    assert "alice" not in text and "sk-123" not in text
    assert [r["where"] for r in snapshot["rejections"]] == ["gateway", "broker"]  # newest first
    assert snapshot["rejections"][1] | {"reason": ""} == {
        "at_ms": 5_000,
        "where": "broker",
        "status": None,
        "route": None,
        "model": "m",
        "workload": "paid",
        "code": "queue_full",
        "reason": "",
    }


def test_snapshot_bounds_rejections_and_shows_workers_and_broker_age() -> None:
    board = StatusBoard()
    notes = [RejectionNote(i, "m", "a", "deadline_unmeetable", "late") for i in range(MAX_REJECTIONS)]
    board.on_stats(stats(10_000, [row("a", queued=4, running=2)], notes), 100.0, ["m"])
    refusals = [Refusal(20_000 + i, "ollama", "(refused)", 403, "forbidden", "no") for i in range(5)]
    beats = [
        (103.0, Heartbeat("w1", "m", 4, 1, [1, 2, 3], 42.25, 0, gpu=True)),
        (99.0, Heartbeat("w0", "m", 2, 2, [], 0.0, 0)),
    ]
    snapshot = board.snapshot(104.5, 30_000, beats, refusals)
    assert len(snapshot["rejections"]) == MAX_REJECTIONS and snapshot["rejections"][0]["at_ms"] == 20_004
    assert snapshot["broker"] == {"id": "b1", "policy": "wfq", "window_s": 60.0, "sent_ms": 10_000, "age_s": 4.5}
    assert [(w["worker"], w["busy"], w["utilization"], w["device"], w["state"]) for w in snapshot["workers"]] == [
        ("w0", 0, 0.0, "CPU", "silent"),
        ("w1", 3, 0.75, "GPU", "ok"),
    ]
    assert snapshot["workloads"][0]["queued"] == 4 and snapshot["workloads"][0]["running"] == 2


def test_no_stats_yet_is_an_empty_page_not_an_error() -> None:
    snapshot = StatusBoard().snapshot(1.0, 1_000, [], [])
    assert snapshot == {"now_ms": 1_000, "broker": None, "workloads": [], "workers": [], "rejections": []}
