"""API keys and header narrowing (pure), and re-run text splicing for HTTP streams."""

from __future__ import annotations

import pytest

from gateway.answer_text import AnswerText
from gateway.config import GatewayConfig, parse_key_spec
from gateway.identity import KeyRing
from schemas.errors import Unauthorized, WorkerFailed
from schemas.messages import Chunk


def test_keys_required_off_loopback_and_specs_validated() -> None:
    ring = KeyRing(GatewayConfig(http_host="0.0.0.0", api_keys=[parse_key_spec("local-key-1:batch:3")]))
    try:
        ring.identify({})
    except Unauthorized as exc:
        assert "API key is required" in exc.message
    else:
        raise AssertionError("a gateway bound beyond loopback served a keyless request")
    identity = ring.identify({"authorization": "Bearer local-key-1", "x-iris-priority": "3"}, end_user="eve@example")
    assert (identity.workload, identity.priority) == ("batch", 3) and identity.user is not None
    # An end user splits the key's share (its own label), never becomes a fairness key of its own.
    assert identity.end_user == "eve_example" and "eve" not in identity.user
    for spec in ("short", "long-enough-key:bad workload", "long-enough-key:w:500"):
        try:
            parse_key_spec(spec)
        except ValueError:
            continue
        raise AssertionError(f"bad key spec {spec!r} accepted")


def test_rerun_is_forwarded_once_past_what_was_sent() -> None:
    text = AnswerText()
    assert text.feed(Chunk(0, "The sky ", 1)) == "The sky "
    assert text.feed(Chunk(1, "is ", 1)) == "is "
    # the worker died; attempt 2 streams the same answer from the start
    assert text.feed(Chunk(0, "The ", 2)) == ""
    assert text.feed(Chunk(1, "sky is bl", 2)) == "bl"
    assert text.feed(Chunk(1, "late chunk of attempt 1", 1)) == ""
    assert text.feed(Chunk(2, "ue", 2)) == "ue"
    assert text.finish("The sky is blue.") == "."
    assert text.sent == "The sky is blue."


def test_rerun_that_differs_fails_the_stream() -> None:
    text = AnswerText()
    text.feed(Chunk(0, "Red", 1))
    with pytest.raises(WorkerFailed, match="differs"):
        text.feed(Chunk(0, "Blue", 2))


def test_first_attempt_lost_before_anything_was_sent() -> None:
    text = AnswerText()
    assert text.feed(Chunk(0, "Hello", 2)) == "Hello"
    assert text.feed(Chunk(1, " world", 2)) == " world"
    assert text.finish("Hello world") == ""


def test_a_continued_rerun_forwards_only_what_was_never_sent() -> None:
    """Attempt 1 sent two chunks, stored three (the third was in flight when its worker died); attempt 2
    continues: it sends the three stored ones again, then goes on."""
    text = AnswerText()
    assert text.feed(Chunk(0, "The ", 1)) + text.feed(Chunk(1, "sky ", 1)) == "The sky "
    resent = [
        Chunk(0, "The ", 2, continued=True),
        Chunk(1, "sky ", 2, continued=True),
        Chunk(2, "is ", 2, continued=True),
    ]
    assert [text.feed(c) for c in resent] == ["", "", "is "]
    assert text.feed(Chunk(3, "blue", 2, continued=True)) == "blue"
    assert text.finish("The sky is blue") == "" and text.sent == "The sky is blue"
