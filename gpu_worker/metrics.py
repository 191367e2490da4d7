"""The worker's Prometheus metrics: time to first token, run time, tokens, outcomes, slot use, tokens/s,
suspensions and resumes (by how the work was kept) with their latency, suspended leases.

Labels are bounded (model, workload, finish reason or error code); workloads come from request subjects,
so past a cap they count as `_other` (`schemas.metric_labels`). `/metrics` is served on
`metrics_host:metrics_port` by prometheus_client's own HTTP server thread.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from runtime.metrics_http import MetricsEndpoint
from schemas.messages import Lease
from schemas.metric_labels import MAX_WORKLOADS_PER_MODEL, BoundedLabels

SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        flow = ["model", "workload"]
        self.requests = Counter(
            "iris_worker_requests", "Leases run, by finish reason or error code", [*flow, "outcome"], registry=r
        )
        self.first_token_s = Histogram(
            "iris_worker_time_to_first_token_seconds",
            "Lease start to first token",
            flow,
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.run_s = Histogram(
            "iris_worker_run_seconds", "Lease start to final reply", flow, buckets=SECONDS_BUCKETS, registry=r
        )
        self.tokens = Counter("iris_worker_tokens_generated", "Completion tokens generated", flow, registry=r)
        self.tokens_per_s = Gauge(
            "iris_worker_tokens_per_second",
            "Completion tokens/s over busy time (batched sequences add up)",
            ["model", "worker"],
            registry=r,
        )
        self.slots = Gauge("iris_worker_slots", "Model slots", ["model", "worker"], registry=r)
        self.busy_slots = Gauge("iris_worker_busy_slots", "Slots running a lease", ["model", "worker"], registry=r)
        self.suspensions = Counter("iris_worker_suspensions", "Leases suspended (slot given up)", flow, registry=r)
        self.resumes = Counter(
            "iris_worker_resumes",
            "Suspended leases resumed, by mode: kept, restored, reprefilled",
            [*flow, "mode"],
            registry=r,
        )
        self.resume_s = Histogram(
            "iris_worker_resume_seconds",
            "Resume order to decoding again (restoring a saved state included)",
            ["model", "mode"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.continuations = Counter(
            "iris_worker_continuations", "Re-runs that continued an earlier attempt's stored progress", flow, registry=r
        )
        self.continued_tokens = Counter(
            "iris_worker_continued_tokens", "Tokens taken over from an earlier attempt, not generated again", flow,
            registry=r,
        )  # fmt: skip
        self.suspended_now = Gauge("iris_worker_suspended", "Leases held suspended", ["model", "worker"], registry=r)
        self.endpoint = MetricsEndpoint(r)
        self._workloads = BoundedLabels(MAX_WORKLOADS_PER_MODEL)

    def serve(self, host: str, port: int) -> None:
        self.endpoint.serve(host, port)

    def close(self) -> None:
        self.endpoint.close()

    def first_token(self, lease: Lease, seconds: float) -> None:
        self.first_token_s.labels(lease.model, self._workloads(lease.workload)).observe(seconds)

    def continued(self, lease: Lease, tokens: int) -> None:
        if tokens:
            workload = self._workloads(lease.workload)
            self.continuations.labels(lease.model, workload).inc()
            self.continued_tokens.labels(lease.model, workload).inc(tokens)

    def finished(self, lease: Lease, outcome: str, seconds: float, completion_tokens: int) -> None:
        workload = self._workloads(lease.workload)
        self.requests.labels(lease.model, workload, outcome).inc()
        self.run_s.labels(lease.model, workload).observe(seconds)
        self.tokens.labels(lease.model, workload).inc(completion_tokens)

    def failed(self, lease: Lease, code: str) -> None:
        self.requests.labels(lease.model, self._workloads(lease.workload), code).inc()

    def suspended(self, lease: Lease) -> None:
        self.suspensions.labels(lease.model, self._workloads(lease.workload)).inc()

    def resumed(self, lease: Lease, mode: str, seconds: float) -> None:
        self.resumes.labels(lease.model, self._workloads(lease.workload), mode).inc()
        self.resume_s.labels(lease.model, mode).observe(seconds)

    def beat(self, model: str, worker_id: str, slots: int, busy: int, tokens_per_s: float, suspended: int = 0) -> None:
        self.suspended_now.labels(model, worker_id).set(suspended)
        self.slots.labels(model, worker_id).set(slots)
        self.busy_slots.labels(model, worker_id).set(busy)
        self.tokens_per_s.labels(model, worker_id).set(tokens_per_s)
