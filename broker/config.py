"""Broker configuration: one frozen Struct from `[broker]` in TOML, `IRIS_BROKER_*` and flags.

Limits have flat defaults for every model; `[broker.models.<name>]` tables override them per model
(any key of `ModelConfig` left out keeps the flat value).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from broker.core.queue import PriorityMode
from schemas.reply_subjects import DEFAULT_REPLY_PREFIXES, parse_reply_prefixes

Token = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]+$")]
LimitBy = Literal["", "user", "workload"]
MinShare = Annotated[float, Meta(ge=0, le=1)]


class ModelConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One model's limits; None = the flat `[broker]` value."""

    max_concurrency: Annotated[int, Meta(ge=0)] | None = None  # also an admission model's capacity
    max_queue: Annotated[int, Meta(ge=0)] | None = None
    max_inflight_s: Annotated[float, Meta(ge=0, le=3600)] | None = None
    limit_by: LimitBy | None = None
    limit_per_value: Annotated[int, Meta(ge=0)] | None = None
    min_share: MinShare | None = None
    priority_mode: PriorityMode | None = None


class BrokerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    nats_url: str = "nats://127.0.0.1:4222"
    policy: Literal["wfq", "fifo"] = "wfq"
    workload_weights: dict[Token, Annotated[float, Meta(gt=0)]] = {}
    max_concurrency: Annotated[int, Meta(ge=0)] = 0  # per model; 0 = all worker slots
    max_queue: Annotated[int, Meta(ge=0)] = 0  # waiting requests per workload; 0 = only the stream's limits
    max_inflight_s: Annotated[float, Meta(ge=0, le=3600)] = 600.0  # longer leases are cut off; 0 = no limit
    limit_by: LimitBy = ""  # "user" or "workload": each value gets `limit_per_value` leases, more by borrowing
    limit_per_value: Annotated[int, Meta(ge=0)] = 0
    min_share: MinShare = 0.0  # WFQ: every waiting class is served at least this fraction as fast as the top one
    priority_mode: PriorityMode = "share"
    models: dict[Token, ModelConfig] = {}
    worker_timeout_s: Annotated[float, Meta(gt=0, le=300)] = 3.0
    offer_timeout_s: Annotated[float, Meta(gt=0, le=60)] = 2.0
    tick_s: Annotated[float, Meta(gt=0, le=10)] = 0.1
    # A request lost with `max_attempts` workers in a row (a poison prompt crashing them) is dead-lettered.
    max_attempts: Annotated[int, Meta(ge=1, le=100)] = 3
    # Stream backstops (see DESIGN.md: limits retention, discard-new).
    max_msgs: Annotated[int, Meta(ge=1)] = 1_000_000
    max_bytes: Annotated[int, Meta(ge=1024)] = 4 * 1024**3
    # Idempotency keys are remembered this long; the broker refuses deadlines longer than this (a retry
    # within the deadline must never run twice), so the default covers the longest one (MAX_DEADLINE_S).
    duplicate_window_s: Annotated[float, Meta(ge=1, le=86_400)] = 3_600.0
    dlq_max_age_s: Annotated[float, Meta(ge=60)] = 7 * 86_400.0  # dead letters older than this are dropped
    dlq_max_bytes: Annotated[int, Meta(ge=1024)] = 1024**3  # beyond this, the oldest dead letters go
    lease_ttl_s: Annotated[float, Meta(ge=60, le=86_400)] = 3_600.0
    broker_id: str = ""  # default: <hostname>-<pid>
    leader_ttl_s: Annotated[float, Meta(ge=0.5, le=60)] = 2.0  # a standby takes over this long after the leader died
    replicas: Annotated[int, Meta(ge=1, le=5)] = 1
    metrics_host: str = "127.0.0.1"
    metrics_port: Annotated[int, Meta(ge=0, le=65535)] = 0  # Prometheus /metrics; 0 = off
    stats_s: Annotated[float, Meta(gt=0, le=60)] = 1.0  # BrokerStats on iris.broker.stats (what `iris top` reads)
    log_level: str = "info"
    # Where replies to a request without an owner token may go (comma-separated; owned requests reply only
    # under `_INBOX.<owner>.`): never to the $KV/$JS/iris.* subjects this broker may publish to.
    reply_prefixes: str = ",".join(DEFAULT_REPLY_PREFIXES)

    @property
    def reply_prefix_list(self) -> tuple[str, ...]:
        return parse_reply_prefixes(self.reply_prefixes)

    def __post_init__(self) -> None:
        parse_reply_prefixes(self.reply_prefixes)
        for name, model in [("", ModelConfig()), *self.models.items()]:
            limit_by = self.limit_by if model.limit_by is None else model.limit_by
            per_value = self.limit_per_value if model.limit_per_value is None else model.limit_per_value
            if limit_by and not per_value:
                where = f"models.{name}." if name else ""
                raise ValueError(f"{where}limit_by = {limit_by!r} needs {where}limit_per_value >= 1")
