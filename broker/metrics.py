"""The broker's Prometheus metrics and the stats window behind `iris top`, fed by the same events.

Labels are bounded: model, workload, priority (1-100), outcome and error code; never a user or request id.
Models and workloads come from request subjects, so they pass through `FlowLabels` (`schemas.metric_labels`):
a model no worker serves is `_unserved`, workloads past a cap per model are `_other`. A flow idle for
`idle_s` (nothing queued or running, no event) leaves `/metrics` and frees its label: a burst of invented
workload names leaves no series behind once it is over (Prometheus reads a counter that comes back as a reset).
`/metrics` is served on `metrics_host:metrics_port` by prometheus_client's own HTTP server thread.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from broker.core.queue import WaitingRequest
from broker.core.stats import Flow, FlowLoad, StatsWindow
from runtime.clock import now_ms
from runtime.metrics_http import MetricsEndpoint
from schemas.messages import BrokerStats, Lease, LeaseDone
from schemas.metric_labels import FlowLabels

WAIT_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
FLOW = ["model", "workload"]
FLOW_PRIORITY = ["model", "workload", "priority"]


class FlowSeries:
    """Each flow's series, remembered so that a flow idle for `idle_s` (nothing queued or running, no event)
    can leave `/metrics` whole and free its label."""

    def __init__(self, labels: FlowLabels, idle_s: float) -> None:
        self.labels = labels
        self.idle_ms = int(idle_s * 1000)
        self._children: dict[Flow, set[tuple[MetricWrapperBase, tuple[str, ...]]]] = {}
        self._last_event_ms: dict[Flow, int] = {}

    def child(self, metric: MetricWrapperBase, model: str, workload: str, *rest: str) -> Any:
        """`metric.labels(model, workload, *rest)`, remembered under its flow."""
        values = (model, workload, *rest)
        self._children.setdefault((model, workload), set()).add((metric, values))
        return metric.labels(*values)

    def touch(self, flow: Flow, now_ms: int) -> None:
        self._last_event_ms[flow] = now_ms

    def forget_idle(self, now_ms: int, busy: set[Flow]) -> set[Flow]:
        """Remove the series of every idle flow not in `busy`; the flows removed."""
        idle = {
            flow
            for flow in self._children
            if flow not in busy and now_ms - self._last_event_ms.get(flow, 0) >= self.idle_ms
        }
        for flow in idle:
            for metric, values in self._children.pop(flow):
                metric.remove(*values)
            self._last_event_ms.pop(flow, None)
            self.labels.forget(*flow)
        return idle


class BrokerMetrics:
    def __init__(self, window_s: float = 60.0, idle_s: float = 600.0) -> None:
        self.registry = r = CollectorRegistry()
        self.window = StatsWindow(window_s)
        self.requests = Counter(
            "iris_broker_requests",
            "Requests by outcome: admitted, started (a lease handed out), completed, rejected (with code)",
            [*FLOW_PRIORITY, "outcome", "code"],
            registry=r,
        )
        self.leader = Gauge("iris_broker_leader", "1 while this broker leads, 0 while it stands by", registry=r)
        self.queue_depth = Gauge("iris_broker_queue_depth", "Requests waiting", FLOW, registry=r)
        self.running = Gauge("iris_broker_running", "Leases running", FLOW, registry=r)
        self.queue_wait_s = Histogram(
            "iris_broker_queue_wait_seconds", "Enqueued to lease", FLOW_PRIORITY, buckets=WAIT_BUCKETS_S, registry=r
        )
        self.reclaims = Counter(
            "iris_broker_lease_reclaims",
            "Leases taken back from a dead or forgetful worker and re-queued",
            ["model"],
            registry=r,
        )
        self.deadline_drops = Counter(
            "iris_broker_deadline_drops",
            "Requests dropped for their deadline: expired in the queue, or unmeetable on arrival",
            [*FLOW, "when"],
            registry=r,
        )
        self.estimated_tokens = Counter(
            "iris_broker_estimated_tokens", "Token cost estimated when the lease started", FLOW, registry=r
        )
        self.actual_tokens = Counter(
            "iris_broker_actual_tokens", "Tokens the finished lease really cost (prompt + completion)", FLOW, registry=r
        )
        self.served_tokens = Counter(
            "iris_broker_served_tokens", "Tokens served, per flow class", FLOW_PRIORITY, registry=r
        )
        self.share = Gauge("iris_broker_token_share", "Share of the model's tokens in the window", FLOW, registry=r)
        self.target_share = Gauge(
            "iris_broker_target_share", "Weight x priority share among busy workloads", FLOW, registry=r
        )
        self.suspensions = Counter(
            "iris_broker_suspensions", "Running leases suspended for a higher-ranked waiting request", FLOW, registry=r
        )
        self.resumes = Counter("iris_broker_resumes", "Suspended leases resumed on their worker", ["model"], registry=r)
        self.endpoint = MetricsEndpoint(r)
        self._shown: set[Flow] = set()
        self.labels = FlowLabels()
        self._series = FlowSeries(self.labels, idle_s)

    def leading(self, leads: bool) -> None:
        self.leader.set(1 if leads else 0)

    def serve(self, host: str, port: int) -> None:
        self.endpoint.serve(host, port)

    def close(self) -> None:
        self.endpoint.close()

    def queued(self, request: WaitingRequest) -> None:
        self._count(*self.labels.flow(request.model, request.workload), request.priority, "admitted")

    def rejected(self, request: WaitingRequest, code: str, message: str, now_ms: int) -> None:
        model, workload = self.labels.flow(request.model, request.workload)
        self._count(model, workload, request.priority, "rejected", code)
        self.window.rejected(model, workload, code, message, now_ms)
        if code in ("deadline_exceeded", "deadline_unmeetable"):
            when = "queued" if code == "deadline_exceeded" else "unmeetable"
            self._child(self.deadline_drops, model, workload, when).inc()

    def started(self, lease: Lease, now_ms: int) -> None:
        model, workload = self.labels.flow(lease.model, lease.workload)
        self._count(model, workload, lease.priority, "started")
        waited_ms = lease.leased_ms - lease.enqueued_ms
        self._child(self.queue_wait_s, model, workload, str(lease.priority)).observe(max(0, waited_ms) / 1000)
        self._child(self.estimated_tokens, model, workload).inc(lease.cost_tokens)
        self.window.started(model, workload, waited_ms, now_ms)

    def finished(self, done: LeaseDone, priority: int, now_ms: int) -> None:
        model, workload = self.labels.flow(done.model, done.workload)
        tokens = done.prompt_tokens + done.completion_tokens
        self._count(model, workload, priority, "completed")
        self._child(self.actual_tokens, model, workload).inc(tokens)
        self._child(self.served_tokens, model, workload, str(priority)).inc(tokens)
        self.window.served(model, workload, tokens, now_ms)

    def suspended(self, lease: Lease) -> None:
        self._child(self.suspensions, *self.labels.flow(lease.model, lease.workload)).inc()

    def resumed(self, model: str, count: int) -> None:
        if count:
            self.resumes.labels(self.labels.model(model)).inc(count)

    def reclaimed(self, request: WaitingRequest) -> None:
        self.reclaims.labels(self.labels.model(request.model)).inc()

    def snapshot(
        self, now_ms: int, load: Mapping[Flow, FlowLoad], weight: Callable[[str], float], **ids: str
    ) -> BrokerStats:
        labelled: dict[Flow, FlowLoad] = {}
        for flow, (queued, running, priority) in load.items():
            key = self.labels.flow(*flow)
            before = labelled.get(key, (0, 0, 1))
            labelled[key] = (before[0] + queued, before[1] + running, max(before[2], priority))
        stats = self.window.snapshot(now_ms, labelled, weight, **ids)
        shown = set()
        for row in stats.workloads:
            shown.add((row.model, row.workload))
            self._child(self.queue_depth, row.model, row.workload).set(row.queued)
            self._child(self.running, row.model, row.workload).set(row.running)
            self._child(self.share, row.model, row.workload).set(row.share)
            self._child(self.target_share, row.model, row.workload).set(row.target_share)
        for flow in self._shown - shown:  # gone idle for a whole window: back to zero, not a stale value
            for gauge in (self.queue_depth, self.running, self.share, self.target_share):
                self._child(gauge, *flow).set(0)
        self._shown = shown
        busy = {flow for flow, (queued, running, _) in labelled.items() if queued + running}
        self._shown -= self._series.forget_idle(now_ms, busy)
        return stats

    def _child(self, metric: MetricWrapperBase, model: str, workload: str, *rest: str) -> Any:
        return self._series.child(metric, model, workload, *rest)

    def _count(self, model: str, workload: str, priority: int, outcome: str, code: str = "") -> None:
        """Every flow event counts here first: the flow was active now."""
        self._series.touch((model, workload), now_ms())
        self._child(self.requests, model, workload, str(priority), outcome, code).inc()
