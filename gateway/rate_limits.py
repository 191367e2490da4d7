"""Per-key rate limits: requests per minute and tokens per minute, as token buckets (clock passed in).

A request is admitted when its key's request bucket holds a whole request and its token bucket is not in
debt, and admission reserves the most it can cost (its prompt estimate plus `max_tokens`): so concurrent
calls see each other's reservations, and a key overshoots its budget by one reservation at most. When the
request ends, for any reason, the reservation is settled to what it really cost (`spent_tokens`): the
usage of its `Result`; nothing for a request refused before it ran; the prompt and the chunks streamed so
far for a stream cut short (a disconnect, a cancel, a failure); the whole reservation when nothing says
less. A refusal says how long to wait (`Retry-After`). Buckets start full and refill continuously; idle
keys cost one small entry each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from schemas.errors import ErrorCode, RateLimited
from schemas.messages import Result

PROMPT_BYTES_PER_TOKEN = 4  # a generous prompt estimate from the request body's size
# A request with no token limit may run until its slot's context is full: reserve a default slot's context
# (`gpu_worker` `ctx_per_slot`); settling afterwards charges what it really took.
NO_LIMIT_RESERVATION_TOKENS = 2048
# Errors that end a request before any worker ran it: it cost nothing.
NEVER_RAN = frozenset(
    {
        ErrorCode.INVALID_REQUEST,
        ErrorCode.PAYLOAD_TOO_LARGE,
        ErrorCode.QUEUE_FULL,
        ErrorCode.RATE_LIMITED,
        ErrorCode.DEADLINE_UNMEETABLE,
        ErrorCode.NO_CAPACITY,
        ErrorCode.MODEL_NOT_FOUND,
    }
)


@dataclass(frozen=True)
class RateLimit:
    requests_per_min: int = 0  # 0 = unlimited
    tokens_per_min: int = 0  # 0 = unlimited

    @property
    def unlimited(self) -> bool:
        return not self.requests_per_min and not self.tokens_per_min


@dataclass
class Bucket:
    per_min: int
    level: float
    updated_ms: int

    def refill(self, now_ms: int) -> None:
        elapsed_ms = max(0, now_ms - self.updated_ms)
        self.level = min(float(self.per_min), self.level + elapsed_ms * self.per_min / 60_000)
        self.updated_ms = now_ms

    def wait_s(self, need: float) -> float:
        """Seconds until the level reaches `need` (0 when it already has)."""
        return 0.0 if self.level >= need else (need - self.level) * 60 / self.per_min


@dataclass
class Reservation:
    """Tokens held for one admitted request until `RateLimiter.settle`."""

    key: str
    limit: RateLimit
    tokens: int
    prompt_tokens: int  # the estimate inside `tokens`
    settled: bool = False


def reservation_tokens(body_bytes: int, max_tokens: int | None) -> tuple[int, int]:
    """(reservation, prompt estimate) for a request of `body_bytes` that may generate `max_tokens` (None: no
    limit, up to a slot's context)."""
    prompt = math.ceil(body_bytes / PROMPT_BYTES_PER_TOKEN)
    if max_tokens is None:
        return max(prompt, NO_LIMIT_RESERVATION_TOKENS), prompt
    return prompt + max_tokens, prompt


def spent_tokens(
    reservation: Reservation, result: Result | None, error: ErrorCode | None, streamed_tokens: int, streaming: bool
) -> int:
    """What an ended request cost: see the module docstring."""
    if result is not None:
        return result.usage.prompt_tokens + result.usage.completion_tokens
    if error in NEVER_RAN:
        return 0
    if streaming:
        return min(reservation.tokens, reservation.prompt_tokens + streamed_tokens)
    return reservation.tokens


class RateLimiter:
    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], Bucket] = {}

    def _bucket(self, key: str, kind: str, per_min: int, now_ms: int) -> Bucket:
        bucket = self._buckets.get((key, kind))
        if bucket is None or bucket.per_min != per_min:  # new key, or its limit was changed
            bucket = self._buckets[(key, kind)] = Bucket(per_min, float(per_min), now_ms)
        bucket.refill(now_ms)
        return bucket

    def admit(self, key: str, limit: RateLimit, now_ms: int, reserve_tokens: int = 0) -> Reservation:
        """Take one request and reserve `reserve_tokens` from `key`'s allowance, or raise `RateLimited`
        with the wait."""
        waits = []
        requests = self._bucket(key, "requests", limit.requests_per_min, now_ms) if limit.requests_per_min else None
        if requests is not None:
            waits.append(("requests", limit.requests_per_min, requests.wait_s(1.0)))
        if limit.tokens_per_min:
            tokens = self._bucket(key, "tokens", limit.tokens_per_min, now_ms)
            waits.append(("tokens", limit.tokens_per_min, tokens.wait_s(0.0)))
        kind, per_min, wait_s = max(waits, key=lambda w: w[2], default=("", 0, 0.0))
        if wait_s > 0:
            raise RateLimited(f"rate limit of {per_min} {kind}/min for this key reached", math.ceil(wait_s))
        if requests is not None:
            requests.level -= 1.0
        reservation = Reservation(key, limit, 0, 0)
        if limit.tokens_per_min:
            self._bucket(key, "tokens", limit.tokens_per_min, now_ms).level -= reserve_tokens
            reservation.tokens = reserve_tokens
        return reservation

    def settle(self, reservation: Reservation, used_tokens: int, now_ms: int) -> None:
        """The request ended having cost `used_tokens`: give back the rest of its reservation, or charge
        what it used beyond it (the bucket may go into debt). A reservation settles once."""
        if reservation.settled:
            return
        reservation.settled = True
        limit = reservation.limit
        if limit.tokens_per_min:
            bucket = self._bucket(reservation.key, "tokens", limit.tokens_per_min, now_ms)
            bucket.level = min(float(bucket.per_min), bucket.level + reservation.tokens - used_tokens)

    def charge(self, key: str, limit: RateLimit, tokens: int, now_ms: int) -> None:
        """Tokens used without a reservation; the bucket may go into debt."""
        self.settle(Reservation(key, limit, 0, 0), tokens, now_ms)
