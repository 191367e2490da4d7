"""The scheduler's limits (`broker.core.limits`) from the broker's config: flat defaults, and each
`[broker.models.<name>]` table completed with them."""

from __future__ import annotations

import dataclasses
from typing import TypeVar

from broker.config import BrokerConfig, ModelConfig
from broker.core.limits import ModelLimits, SchedulerLimits

T = TypeVar("T")


def scheduler_limits(config: BrokerConfig) -> SchedulerLimits:
    """The scheduler's limits from the broker config: flat defaults, and each `[broker.models.<name>]`
    table completed with them."""
    flat = ModelLimits(
        max_concurrency=config.max_concurrency,
        max_queue=config.max_queue,
        max_inflight_ms=int(config.max_inflight_s * 1000),
        limit_by=config.limit_by,
        limit_per_value=config.limit_per_value,
        min_share=config.min_share,
        priority_mode=config.priority_mode,
        preempt_ratio=config.preempt_ratio,
        preempt_min_run_ms=int(config.preempt_min_run_s * 1000),
        preempt_max_per_request=config.preempt_max_per_request,
    )
    models = {name: _merged(flat, own) for name, own in config.models.items()}
    return SchedulerLimits(
        policy=config.policy,
        workload_weights=config.workload_weights,
        models=models,
        worker_timeout_ms=int(config.worker_timeout_s * 1000),
        max_attempts=config.max_attempts,
        **dataclasses.asdict(flat),
    )


def _merged(flat: ModelLimits, own: ModelConfig) -> ModelLimits:
    inflight_ms = None if own.max_inflight_s is None else int(own.max_inflight_s * 1000)
    min_run_ms = None if own.preempt_min_run_s is None else int(own.preempt_min_run_s * 1000)
    return ModelLimits(
        max_concurrency=_given(own.max_concurrency, flat.max_concurrency),
        max_queue=_given(own.max_queue, flat.max_queue),
        max_inflight_ms=_given(inflight_ms, flat.max_inflight_ms),
        limit_by=_given(own.limit_by, flat.limit_by),
        limit_per_value=_given(own.limit_per_value, flat.limit_per_value),
        min_share=_given(own.min_share, flat.min_share),
        priority_mode=_given(own.priority_mode, flat.priority_mode),
        preempt_ratio=_given(own.preempt_ratio, flat.preempt_ratio),
        preempt_min_run_ms=_given(min_run_ms, flat.preempt_min_run_ms),
        preempt_max_per_request=_given(own.preempt_max_per_request, flat.preempt_max_per_request),
    )


def _given(value: T | None, default: T) -> T:
    return default if value is None else value
