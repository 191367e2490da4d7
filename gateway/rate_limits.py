"""Per-key rate limits: requests per minute and tokens per minute, as token buckets (clock passed in).

A request is admitted when its key's request bucket holds a whole request and its token bucket is not in
debt; the tokens a request really used (prompt + completion) are charged when its answer ends, so a key
may overshoot by one answer and then waits until the bucket refills. A refusal says how long to wait
(`Retry-After`). Buckets start full and refill continuously; idle keys cost one small entry each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from schemas.errors import RateLimited


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


class RateLimiter:
    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], Bucket] = {}

    def _bucket(self, key: str, kind: str, per_min: int, now_ms: int) -> Bucket:
        bucket = self._buckets.get((key, kind))
        if bucket is None or bucket.per_min != per_min:  # new key, or its limit was changed
            bucket = self._buckets[(key, kind)] = Bucket(per_min, float(per_min), now_ms)
        bucket.refill(now_ms)
        return bucket

    def admit(self, key: str, limit: RateLimit, now_ms: int) -> None:
        """Take one request from `key`'s allowance or raise `RateLimited` with the wait."""
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

    def charge(self, key: str, limit: RateLimit, tokens: int, now_ms: int) -> None:
        """Tokens a finished answer used; the bucket may go into debt."""
        if limit.tokens_per_min:
            self._bucket(key, "tokens", limit.tokens_per_min, now_ms).level -= tokens
