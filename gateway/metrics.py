"""Prometheus metrics of the gateway, and the last refusals it answered (for the status page). Labels are
bounded: API family, route template, model, workload, status and error code; never a user or key."""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Refusal(NamedTuple):
    at_ms: int
    api: str
    route: str
    status: int
    code: str
    message: str


class Refusals:
    """The last `max_kept` error answers, newest last: what the status page lists as the gateway's rejections."""

    def __init__(self, max_kept: int = 20) -> None:
        self.kept: deque[Refusal] = deque(maxlen=max_kept)

    def note(self, at_ms: int, api: str, route: str, status: int, code: str, message: str) -> None:
        self.kept.append(Refusal(at_ms, api, route, status, code, message[:200]))


class GatewayMetrics:
    def __init__(self) -> None:
        self.refusals = Refusals()
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "iris_gateway_requests",
            "HTTP requests answered, by route, status and Iris error code ('' on success)",
            ["api", "route", "status", "code"],
            registry=r,
        )
        self.in_flight = Gauge("iris_gateway_in_flight", "Requests waiting for or streaming an answer", registry=r)
        self.first_token_s = _latency(
            r,
            "iris_gateway_time_to_first_token_seconds",
            "From request received to the first text sent (streaming) or the answer (non-streaming)",
        )
        self.duration_s = _latency(
            r, "iris_gateway_request_duration_seconds", "From request received to the last byte of the answer"
        )
        self.tokens = Counter(
            "iris_gateway_completion_tokens", "Tokens generated for answers sent", ["model", "workload"], registry=r
        )
        self.disconnects = Counter(
            "iris_gateway_client_disconnects",
            "Requests cancelled because the HTTP client went away before the answer ended",
            ["api"],
            registry=r,
        )


def _latency(registry: CollectorRegistry, name: str, documentation: str) -> Histogram:
    """A latency histogram by API family, model and workload."""
    return Histogram(name, documentation, ["api", "model", "workload"], buckets=LATENCY_BUCKETS_S, registry=registry)
