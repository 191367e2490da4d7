"""Per-key token buckets: requests/min and tokens/min, with the wait in the refusal (simulated clock)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.rate_limits import RateLimit, RateLimiter, Reservation, reservation_tokens, spent_tokens
from schemas.errors import ErrorCode, RateLimited
from schemas.messages import Result, Timings, Usage


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


def test_concurrent_calls_see_each_others_reservations() -> None:
    """10 calls at once, 300 tokens reserved each, 1000 a minute: 4 get in (1000, 700, 400, 100 left)."""
    limiter, limit = RateLimiter(), RateLimit(tokens_per_min=1_000)
    admitted = []
    for _ in range(10):
        try:
            admitted.append(limiter.admit("k", limit, 0, reserve_tokens=300))
        except RateLimited:
            continue
    assert len(admitted) == 4
    for reservation in admitted:
        limiter.settle(reservation, 300, 0)
    with pytest.raises(RateLimited):
        limiter.admit("k", limit, 0, reserve_tokens=1)


def test_settling_gives_back_what_was_not_used_once() -> None:
    limiter, limit = RateLimiter(), RateLimit(tokens_per_min=1_000)
    big = limiter.admit("k", limit, 0, reserve_tokens=1_200)  # more than the bucket holds: into debt
    with pytest.raises(RateLimited):
        limiter.admit("k", limit, 0, reserve_tokens=10)
    limiter.settle(big, 100, 0)  # 1,100 back: 900 left
    limiter.settle(big, 100, 0)  # settled once only: still 900
    limiter.admit("k", limit, 0, reserve_tokens=950)  # -50
    with pytest.raises(RateLimited):
        limiter.admit("k", limit, 0, reserve_tokens=1)


def test_what_an_ended_request_cost() -> None:
    reservation = Reservation("k", RateLimit(tokens_per_min=1_000), tokens=350, prompt_tokens=50)
    result = Result("t", "stop", Usage(12, 30), Timings(0.0, 0.0), "w")
    assert spent_tokens(reservation, result, None, 30, streaming=True) == 42
    assert spent_tokens(reservation, None, ErrorCode.QUEUE_FULL, 0, streaming=True) == 0
    assert spent_tokens(reservation, None, None, 20, streaming=True) == 70  # disconnected after 20 chunks
    assert spent_tokens(reservation, None, ErrorCode.CANCELLED, 900, streaming=True) == 350
    assert spent_tokens(reservation, None, None, 0, streaming=False) == 350  # nothing says less
    assert reservation_tokens(body_bytes=400, max_tokens=256) == (356, 100)


@given(
    st.lists(
        st.tuples(st.integers(0, 3_000), st.integers(1, 400), st.floats(0, 1), st.booleans()),
        min_size=1,
        max_size=200,
    )
)
def test_a_key_never_takes_more_than_its_budget_and_one_reservation(
    steps: list[tuple[int, int, float, bool]],
) -> None:
    """Whatever the mix of calls in flight and ends (used <= reserved), the tokens used stay within the
    budget, what refilled, and one reservation."""
    limiter, limit = RateLimiter(), RateLimit(tokens_per_min=1_000)
    now_ms, used_total, pending = 0, 0.0, []
    for gap_ms, reserve, fraction, end_one in steps:
        now_ms += gap_ms
        try:
            pending.append((limiter.admit("k", limit, now_ms, reserve_tokens=reserve), fraction))
        except RateLimited:
            pass
        if end_one and pending:
            reservation, used = pending.pop(0)
            limiter.settle(reservation, round(reservation.tokens * used), now_ms)
            used_total += round(reservation.tokens * used)
    used_total += sum(round(reservation.tokens * used) for reservation, used in pending)
    assert used_total <= 1_000 + 400 + now_ms * 1_000 / 60_000
