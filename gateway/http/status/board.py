"""What the status page shows, as plain data: the leading broker's last `BrokerStats`, a few minutes of its
per-workload history, the workers' heartbeats and the last refusals of the broker and of this gateway.

Same label rules as `/metrics` (`schemas.metric_labels`): only models a worker serves keep their name and
each model shows a bounded number of workloads (the rest sum up as `_other`), so a client publishing to
made-up subjects cannot grow the page or its history. No prompt, user or key is ever part of it: rows are
per (model, workload), and a refusal's reason has every value a client chose removed (Iris quotes those
with `!r` in its messages). Pure: the clock is passed in.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.metrics import Refusal
from schemas.messages import BrokerStats, Heartbeat, RejectionNote, WorkloadStats
from schemas.metric_labels import FlowLabels

HISTORY_S = 300.0  # how far back the page's charts reach
SILENT_S = 3.0  # a worker not heard for this long is shown as silent
MAX_WORKERS = 200
MAX_REJECTIONS = 20
MAX_POINTS = 1500  # per flow: 5 minutes of stats at `stats_s` 0.2, whatever times a publisher claims
Point = tuple[int, float, float, int, int]  # broker's sent_ms, wait p50 s, wait p95 s, queued, running
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def redact(message: str) -> str:
    """A reason without the values a client chose (names, ids, header values): Iris quotes them all."""
    return _QUOTED.sub("'…'", message)


def merge_rows(rows: Iterable[WorkloadStats], labels: FlowLabels) -> list[dict[str, Any]]:
    """The broker's rows under bounded labels; rows that share a label (`_other`) add up."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        model, workload = labels.flow(row.model, row.workload)
        seen = merged.get((model, workload))
        if seen is None:
            merged[(model, workload)] = {
                "model": model,
                "workload": workload,
                "queued": row.queued,
                "running": row.running,
                "weight": row.weight,
                "priority": row.priority,
                "share": row.share,
                "target_share": row.target_share,
                "wait_p50_s": row.wait_p50_s,
                "wait_p95_s": row.wait_p95_s,
                "started": row.started,
            }
            continue
        for name in ("queued", "running", "started", "share", "target_share"):
            seen[name] += getattr(row, name)
        for name in ("weight", "priority", "wait_p50_s", "wait_p95_s"):
            seen[name] = max(seen[name], getattr(row, name))
    return [merged[key] for key in sorted(merged)]


@dataclass
class StatusBoard:
    history_s: float = HISTORY_S
    labels: FlowLabels = field(default_factory=FlowLabels)
    stats: BrokerStats | None = None
    stats_at_s: float = 0.0  # monotonic
    rows: list[dict[str, Any]] = field(default_factory=list)
    history: dict[str, deque[Point]] = field(default_factory=dict)

    def on_stats(self, stats: BrokerStats, at_s: float, served_models: Iterable[str]) -> None:
        for model in served_models:
            self.labels.serve(model)
        self.stats, self.stats_at_s = stats, at_s
        self.rows = merge_rows(stats.workloads, self.labels)
        for row in self.rows:
            key = f"{row['model']}/{row['workload']}"
            point = (stats.sent_ms, row["wait_p50_s"], row["wait_p95_s"], row["queued"], row["running"])
            self.history.setdefault(key, deque(maxlen=MAX_POINTS)).append(point)
        cutoff_ms = stats.sent_ms - int(self.history_s * 1000)
        for key, points in list(self.history.items()):
            while points and points[0][0] < cutoff_ms:
                points.popleft()
            if not points:
                del self.history[key]

    def history_view(self) -> dict[str, Any]:
        return {"history_s": self.history_s, "flows": {key: list(points) for key, points in self.history.items()}}

    def snapshot(
        self, now_s: float, now_ms: int, beats: Iterable[tuple[float, Heartbeat]], refusals: Iterable[Refusal]
    ) -> dict[str, Any]:
        stats = self.stats
        broker = None
        if stats is not None:
            age_s = round(max(0.0, now_s - self.stats_at_s), 1)
            broker = {"id": stats.broker_id, "policy": stats.policy, "window_s": stats.window_s}
            broker |= {"sent_ms": stats.sent_ms, "age_s": age_s}
        notes = [self._broker_note(note) for note in (stats.rejections if stats else [])]
        notes += [_gateway_note(refusal) for refusal in refusals]
        notes.sort(key=lambda note: -int(note["at_ms"]))
        return {
            "now_ms": now_ms,
            "broker": broker,
            "workloads": self.rows,
            "workers": workers_view(beats, now_s),
            "rejections": notes[:MAX_REJECTIONS],
        }

    def _broker_note(self, note: RejectionNote) -> dict[str, Any]:
        model, workload = self.labels.flow(note.model, note.workload)
        return _note(note.at_ms, "broker", None, None, model, workload, note.code, note.message)


def _gateway_note(refusal: Refusal) -> dict[str, Any]:
    return _note(refusal.at_ms, "gateway", refusal.status, refusal.route, None, None, refusal.code, refusal.message)


def _note(
    at_ms: int,
    where: str,
    status: int | None,
    route: str | None,
    model: str | None,
    workload: str | None,
    code: str,
    message: str,
) -> dict[str, Any]:
    return {
        "at_ms": at_ms,
        "where": where,
        "status": status,
        "route": route,
        "model": model,
        "workload": workload,
        "code": code,
        "reason": redact(message),
    }


def workers_view(beats: Iterable[tuple[float, Heartbeat]], now_s: float) -> list[dict[str, Any]]:
    """Per worker heard lately: slots, busy slots, utilization, tokens/s, device, state."""
    rows = []
    for seen_s, beat in sorted(beats, key=lambda item: (item[1].model, item[1].worker_id))[:MAX_WORKERS]:
        busy = max(0, beat.slots - beat.free_slots)
        state = "draining" if beat.draining else "silent" if now_s - seen_s > SILENT_S else "ok"
        rows.append(
            {
                "worker": beat.worker_id[:64],
                "model": beat.model,
                "slots": beat.slots,
                "busy": busy,
                "utilization": round(busy / beat.slots, 3) if beat.slots else 0.0,
                "tokens_per_s": round(beat.tokens_per_s, 1),
                "device": "GPU" if beat.gpu else "CPU",
                "state": state,
                "seen_s_ago": round(max(0.0, now_s - seen_s), 1),
            }
        )
    return rows
