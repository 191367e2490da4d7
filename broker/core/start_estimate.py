"""When a waiting request will start, and when its answer will be done: the estimate behind
`deadline_unmeetable` and the ETA in `QueueUpdate`. Pure.

The wait is the work that starts before the request under the fair order (`RequestQueue.work_ahead`: its
tokens, and `position`: how many requests), priced at the engine time its workers showed for answers of each
size (`broker.core.service_time`), spread over the model's parallelism; nothing when a slot is free for it now.
Until an answer has come back with its tokens (tickets report none), whole mean service rounds ahead.
"""

from __future__ import annotations

from broker.core.limits import ModelLimits
from broker.core.pool import ModelPool


def tokens_ahead(pool: ModelPool, stream_seq: int) -> float | None:
    """The work ahead of a waiting request, for both estimates below (one walk of the queue); None until
    service times are known, when the estimates count whole service rounds instead."""
    return pool.queue.work_ahead(stream_seq) if pool.service_time.known else None


def start_delay_ms(pool: ModelPool, limits: ModelLimits, position: int, ahead: float | None) -> float:
    free_slots = pool.workers.free_slots if pool.workers else 1 << 30
    free_now = max(0, min(pool.capacity(limits.max_concurrency), free_slots))
    if position < free_now:
        return 0.0
    slots = pool.parallelism(limits.max_concurrency)
    if ahead is not None:
        return pool.service_time.ms(position - free_now, ahead) / slots
    return ((position - free_now) // slots + 1) * pool.service_ms_ema


def eta_s(
    pool: ModelPool, limits: ModelLimits, position: int, ahead: float | None = None, own_tokens: int = 0
) -> float:
    """Seconds until the answer is expected: the work ahead and its own, over the model's parallelism."""
    slots = pool.parallelism(limits.max_concurrency)
    if ahead is None:
        return round((position // slots + 1) * pool.service_ms_ema / 1000.0, 3)
    ahead_ms = pool.service_time.ms(position, ahead) / slots
    return round((ahead_ms + pool.service_time.ms(1, own_tokens)) / 1000.0, 3)
