"""Broker configuration: one frozen Struct from `[broker]` in TOML, `IRIS_BROKER_*` and flags.

Limits have flat defaults for every model; `[broker.models.<name>]` tables override them per model
(any key of `ModelConfig` left out keeps the flat value).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from broker.core.queue import PriorityMode
from runtime.config_fields import DEFAULT_NATS_URL, LogLevel, MetricsHost, MetricsPort, NatsUrl, ReplyingService

Token = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]+$")]
LimitBy = Literal["", "user", "workload"]
MinShare = Annotated[float, Meta(ge=0, le=1)]
PreemptRatio = Annotated[float, Meta(ge=0, le=10_000)]
PreemptMinRun = Annotated[float, Meta(ge=0, le=3600)]
PreemptMaxPerRequest = Annotated[int, Meta(ge=0, le=100)]


class ModelConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One model's limits; None = the flat `[broker]` value."""

    max_concurrency: Annotated[int, Meta(ge=0)] | None = None  # also an admission model's capacity
    max_queue: Annotated[int, Meta(ge=0)] | None = None
    max_inflight_s: Annotated[float, Meta(ge=0, le=3600)] | None = None
    limit_by: LimitBy | None = None
    limit_per_value: Annotated[int, Meta(ge=0)] | None = None
    min_share: MinShare | None = None
    priority_mode: PriorityMode | None = None
    preempt_ratio: PreemptRatio | None = None
    preempt_min_run_s: PreemptMinRun | None = None
    preempt_max_per_request: PreemptMaxPerRequest | None = None


class BrokerConfig(ReplyingService, frozen=True, forbid_unknown_fields=True):
    nats_url: NatsUrl = DEFAULT_NATS_URL
    policy: Annotated[
        Literal["wfq", "fifo"], Meta(description="Weighted-fair order, or first come first served (the baseline).")
    ] = "wfq"
    workload_weights: Annotated[
        dict[Token, Annotated[float, Meta(gt=0)]], Meta(description='Weight per workload, e.g. {"paid": 4} (others 1).')
    ] = {}
    max_concurrency: Annotated[int, Meta(ge=0, description="Leases per model at once (0 = all worker slots).")] = 0
    max_queue: Annotated[
        int, Meta(ge=0, description="Waiting requests per workload (0 = only the stream's limits).")
    ] = 0
    max_inflight_s: Annotated[
        float, Meta(ge=0, le=3600, description="Seconds a lease may run before it is cut off (0 = no limit).")
    ] = 600.0
    limit_by: Annotated[
        LimitBy, Meta(description="Cap leases per user or per workload at --limit-per-value, more by borrowing.")
    ] = ""
    limit_per_value: Annotated[
        int, Meta(ge=0, description="Leases per --limit-by value before borrowing idle capacity.")
    ] = 0
    min_share: Annotated[
        MinShare, Meta(description="WFQ: every waiting class runs at least this fraction as fast as the top one.")
    ] = 0.0
    priority_mode: Annotated[
        PriorityMode,
        Meta(description="WFQ: priority multiplies shares across workloads (share), or higher bands first (strict)."),
    ] = "share"
    preempt_ratio: Annotated[
        PreemptRatio,
        Meta(description="Suspend a running lease for a waiting one ranked this many times higher (0 = never)."),
    ] = 0.0
    preempt_min_run_s: Annotated[
        PreemptMinRun, Meta(description="Seconds a lease runs (since start or resume) before it may be suspended.")
    ] = 1.0
    # 3, not 1: a request resumed after its only suspension ran to its end, and under overload such requests
    # held the slots high ones arrived for (iris bench overload: high's p99 queue wait 1.57x unloaded at 1, 0.87x at 3).
    preempt_max_per_request: Annotated[
        PreemptMaxPerRequest, Meta(description="Times one request may be suspended; then it runs to the end.")
    ] = 3
    models: Annotated[
        dict[Token, ModelConfig],
        Meta(description='Per-model limits overriding the flat ones, e.g. {"m": {"max_queue": 5}}.'),
    ] = {}
    worker_timeout_s: Annotated[
        float, Meta(gt=0, le=300, description="Seconds without heartbeat before a worker is dead.")
    ] = 3.0
    offer_timeout_s: Annotated[
        float, Meta(gt=0, le=60, description="Seconds a worker has to answer a lease offer.")
    ] = 2.0
    tick_s: Annotated[float, Meta(gt=0, le=10, description="Seconds between deadline and lease-age checks.")] = 0.1
    # A request lost with `max_attempts` workers in a row (a poison prompt crashing them) is dead-lettered.
    max_attempts: Annotated[
        int, Meta(ge=1, le=100, description="Workers lost in a row on one request before it is dead-lettered.")
    ] = 3
    # Stream backstops (limits retention, discard-new: docs/architecture.md).
    max_msgs: Annotated[int, Meta(ge=1, description="Requests the stream holds at most (then discard-new).")] = (
        1_000_000
    )
    max_bytes: Annotated[int, Meta(ge=1024, description="Bytes the request stream holds at most.")] = 4 * 1024**3
    # Idempotency keys are remembered this long; the broker refuses deadlines longer than this (a retry
    # within the deadline must never run twice), so the default covers the longest one (MAX_DEADLINE_S).
    duplicate_window_s: Annotated[
        float, Meta(ge=1, le=86_400, description="Seconds an idempotency key is remembered (the longest deadline).")
    ] = 3_600.0
    dlq_max_age_s: Annotated[float, Meta(ge=60, description="Seconds before a dead letter is dropped.")] = 7 * 86_400.0
    dlq_max_bytes: Annotated[int, Meta(ge=1024, description="Bytes of dead letters kept; beyond, the oldest go.")] = (
        1024**3
    )
    answers_max_bytes: Annotated[
        int, Meta(ge=1024, description="Bytes of stored final replies kept (IRIS_ANSWERS); beyond, the oldest go.")
    ] = 1024**3
    lease_ttl_s: Annotated[
        float, Meta(ge=60, le=86_400, description="Seconds a lease record outlives a broker that forgot it.")
    ] = 3_600.0
    broker_id: Annotated[
        str, Meta(description="Name in the leader election (default: <host>-<pid>-<4 random hex>).")
    ] = ""
    leader_ttl_s: Annotated[
        float, Meta(ge=0.5, le=60, description="Seconds a silent leader keeps the lead (then a standby takes over).")
    ] = 2.0
    read_ahead: Annotated[
        bool,
        Meta(description="Standby: index the backlog as it comes, so a takeover serves it in fair order at once."),
    ] = True
    replicas: Annotated[
        int, Meta(ge=1, le=5, description="Stream and lease bucket replicas (3 on a 3-node cluster).")
    ] = 1
    metrics_host: MetricsHost = "127.0.0.1"
    metrics_port: MetricsPort = 0
    stats_s: Annotated[
        float, Meta(gt=0, le=60, description="Seconds between BrokerStats on iris.broker.stats (what iris top reads).")
    ] = 1.0
    metrics_idle_s: Annotated[
        float,
        Meta(gt=0, le=86400, description="Seconds a flow stays idle before its series leave /metrics."),
    ] = 600.0
    log_level: LogLevel = "info"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, model in [("", ModelConfig()), *self.models.items()]:
            limit_by = self.limit_by if model.limit_by is None else model.limit_by
            per_value = self.limit_per_value if model.limit_per_value is None else model.limit_per_value
            if limit_by and not per_value:
                where = f"models.{name}." if name else ""
                raise ValueError(f"{where}limit_by = {limit_by!r} needs {where}limit_per_value >= 1")
