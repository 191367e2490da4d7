"""Reply-subject rules (`schemas.reply_subjects`) and the owner-aware subjects (`schemas.subjects`)."""

from __future__ import annotations

import pytest

from schemas.reply_subjects import may_cancel, parse_reply_prefixes, reply_problem
from schemas.subjects import (
    cancel_subject,
    cancelled_request_id,
    parse_cancel_subject,
    parse_request_subject,
    request_owner,
    request_subject,
)


@pytest.mark.parametrize(
    "reply_to",
    [
        "$KV.IRIS_BROKERS.leader",
        "$KV.IRIS_LEASES.999999",
        "$JS.API.STREAM.PURGE.IRIS_REQUESTS",
        "iris.worker.hb.m.x",
        "iris.broker.stats",
        "_INBOX",
        "_INBOX.",
        "_INBOX..x",
        "_INBOX.x.",
        "_INBOX.>",
        "_INBOX.a*",
        "_INBOX.a\tb",
        "_INBOX.a\x00b",
        "_INBOX." + "x" * 600,
        "",
        "_inbox.x",
    ],
)
def test_hostile_reply_subjects_are_refused(reply_to: str) -> None:
    assert reply_problem(reply_to, None) is not None


def test_inboxes_under_the_prefixes_are_allowed() -> None:
    assert reply_problem("_INBOX.abc.def", None) is None
    assert reply_problem("replies.x", None, ("_INBOX.", "replies.")) is None
    assert reply_problem("_INBOX.x", None, ("replies.",)) is not None


def test_an_owned_request_replies_only_under_its_owners_inbox() -> None:
    assert reply_problem("_INBOX.alice.1.2", "alice") is None
    assert "_INBOX.alice." in (reply_problem("_INBOX.bob.1", "alice") or "")
    assert reply_problem("_INBOX.alicex.1", "alice") is not None  # a prefix of a name is not the name
    assert reply_problem("replies.x", "alice", ("replies.",)) is not None  # configured prefixes do not widen it


def test_only_the_owner_or_a_trusted_plain_cancel_may_cancel() -> None:
    assert may_cancel("alice", "_INBOX.alice.x.y")
    assert not may_cancel("bob", "_INBOX.alice.x.y")
    assert not may_cancel("ali", "_INBOX.alice.x.y")
    assert may_cancel(None, "_INBOX.alice.x.y")  # iris.cancel.<id>: no accounts, or a trusted service


@pytest.mark.parametrize("text", ["", ",", "$KV.", "$JS.API.", "iris.", "_INBOX", ">.", "a b.", "a..", "*."])
def test_reply_prefixes_that_open_too_much_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        parse_reply_prefixes(text)


def test_reply_prefixes_parse() -> None:
    assert parse_reply_prefixes(" _INBOX., replies.x. ") == ("_INBOX.", "replies.x.")


def test_request_and_cancel_subjects_carry_an_optional_owner() -> None:
    assert parse_request_subject(request_subject("m", "w", "alice")) == ("m", "w")
    assert request_owner(request_subject("m", "w", "alice")) == "alice"
    assert request_owner(request_subject("m", "w")) is None
    assert parse_request_subject("iris.req.m.w.o.x") is None
    assert parse_cancel_subject(cancel_subject("r1")) == (None, "r1")
    assert parse_cancel_subject(cancel_subject("r1", "alice")) == ("alice", "r1")
    assert cancelled_request_id(cancel_subject("r1", "alice")) == "r1"
    assert parse_cancel_subject("iris.cancel") is None
    assert parse_cancel_subject("iris.cancel.a.b.c") is None
    assert parse_cancel_subject("iris.other.x") is None
