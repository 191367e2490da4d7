"""Per-key token buckets: requests/min and tokens/min, with the wait in the refusal (simulated clock)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.rate_limits import RateLimit, RateLimiter
from schemas.errors import RateLimited


def test_requests_per_minute_refill_continuously() -> None:
    limiter, limit = RateLimiter(), RateLimit(requests_per_min=3)
    for _ in range(3):
        limiter.admit("k", limit, now_ms=0)
    with pytest.raises(RateLimited) as refused:
        limiter.admit("k", limit, now_ms=0)
    assert refused.value.retry_after_s == 20  # one request refills every 20 s
    limiter.admit("other", limit, now_ms=0)  # keys do not share an allowance
    limiter.admit("k", limit, now_ms=20_000)
    with pytest.raises(RateLimited):
        limiter.admit("k", limit, now_ms=20_001)


def test_tokens_are_charged_after_the_answer_and_debt_blocks() -> None:
    limiter, limit = RateLimiter(), RateLimit(tokens_per_min=600)
    limiter.admit("k", limit, now_ms=0)
    limiter.charge("k", limit, 900, now_ms=0)  # one answer may overshoot: 300 tokens in debt
    with pytest.raises(RateLimited, match="600 tokens/min") as refused:
        limiter.admit("k", limit, now_ms=0)
    assert refused.value.retry_after_s == 30  # 300 tokens at 10 tokens/s
    limiter.admit("k", limit, now_ms=30_000)


@given(st.lists(st.tuples(st.integers(0, 5_000), st.integers(0, 500)), min_size=1, max_size=200))
def test_never_more_requests_than_the_limit_allows(steps: list[tuple[int, int]]) -> None:
    limiter, limit = RateLimiter(), RateLimit(requests_per_min=10, tokens_per_min=1_000)
    now_ms, admitted = 0, 0
    for gap_ms, tokens in steps:
        now_ms += gap_ms
        try:
            limiter.admit("k", limit, now_ms)
        except RateLimited as exc:
            assert exc.retry_after_s is not None and exc.retry_after_s >= 1
            continue
        admitted += 1
        limiter.charge("k", limit, tokens, now_ms)
    assert admitted <= 10 + now_ms * 10 / 60_000  # the initial burst plus what refilled
