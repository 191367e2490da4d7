"""Idempotency lasts as long as a request may: the dedupe window covers the longest deadline the broker
accepts, and a deadline past the window is refused at intake, naming why."""

from __future__ import annotations

import pytest

from broker.config import BrokerConfig
from broker.core.intake import waiting_request
from broker.streams import request_stream_config
from schemas.errors import InvalidRequest
from schemas.headers import MAX_DEADLINE_S

STORED_MS = 1_000_000


def headers(deadline_ms: int) -> dict[str, str]:
    return {"Iris-Reply-To": "_INBOX.x", "Iris-Deadline": str(deadline_ms)}


def test_default_window_covers_the_longest_deadline() -> None:
    window_s = request_stream_config(BrokerConfig()).duplicate_window
    assert window_s is not None and window_s >= MAX_DEADLINE_S


def test_deadline_past_the_window_is_refused() -> None:
    limit_ms = STORED_MS + 600_000
    request = waiting_request("iris.req.m.w", headers(limit_ms), 1, STORED_MS, STORED_MS, max_deadline_s=600)
    assert request.deadline_ms == limit_ms
    with pytest.raises(InvalidRequest, match="dedupe window"):
        waiting_request("iris.req.m.w", headers(limit_ms + 1), 2, STORED_MS, STORED_MS, max_deadline_s=600)
