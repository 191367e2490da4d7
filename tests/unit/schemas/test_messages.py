"""Wire contract: every bad input fails with a typed error naming what was wrong."""

from __future__ import annotations

import msgspec
import pytest

from schemas import headers as h
from schemas.errors import HTTP_STATUS, DeadlineExceeded, ErrorCode, InvalidRequest, IrisError
from schemas.headers import parse_request_headers, ttl_header
from schemas.messages import GenerateRequest, api_request_decoder, request_decoder
from schemas.subjects import is_token, parse_request_subject, request_subject, to_token

NOW = 1_700_000_000_000


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b'{"prompt": "x", "max_tokens": 0}', "$.max_tokens"),
        (b'{"prompt": "x", "max_tokens": 99999999}', "$.max_tokens"),
        (b'{"prompt": "x", "temperature": -1}', "$.temperature"),
        (b'{"prompt": "x", "top_p": 0}', "$.top_p"),
        (b'{"prompt": "x", "stop": ["a","b","c","d","e","f","g","h","i"]}', "$.stop"),
        (b'{"prompt": "x", "stop": [""]}', "$.stop[0]"),
        (b'{"prompt": "x", "seed": -3}', "$.seed"),
        (b'{"prompt": 5}', "$.prompt"),
        (b'{"messages": []}', "$.messages"),
        (b'{"messages": [{"role": "wizard", "content": "x"}]}', "$.messages[0].role"),
        (b'{"messages": [{"role": "user", "content": "x", "name": "y"}]}', "name"),
        (b'{"prompt": "x", "colour": "red"}', "colour"),
        (b'{"prompt": "x", "messages": [{"role": "user", "content": "x"}]}', "exactly one of"),
        (b"{}", "exactly one of"),
        (b'{"prompt": "x", "max_tokens": 8, "min_tokens": 9}', "min_tokens (9) is more than max_tokens (8)"),
        (b'{"prompt": "x", "min_tokens": -1}', "$.min_tokens"),
        (b'{"prompt": "x", "min_tokens": 4, "response_format": {}}', "min_tokens cannot be combined"),
    ],
)
def test_bad_request_body_names_the_problem(body: bytes, named: str) -> None:
    with pytest.raises(msgspec.ValidationError) as info:
        request_decoder.decode(body)
    assert named in str(info.value)


def test_malformed_json_is_a_decode_error() -> None:
    with pytest.raises(msgspec.DecodeError):
        request_decoder.decode(b'{"prompt": ')


def test_good_request_defaults() -> None:
    request = request_decoder.decode(b'{"prompt": "hi"}')
    assert request == GenerateRequest(prompt="hi")
    assert request.max_tokens == 256 and request.stream is True


def test_api_request_keeps_routing_apart_from_generation() -> None:
    api = api_request_decoder.decode(b'{"prompt": "hi", "model": "m", "priority": 5, "max_tokens": 3}')
    assert api.generate_request() == GenerateRequest(prompt="hi", max_tokens=3)
    with pytest.raises(msgspec.ValidationError, match=r"\$.priority"):
        api_request_decoder.decode(b'{"prompt": "hi", "priority": 101}')


def test_headers_parse_with_defaults() -> None:
    labels = parse_request_headers({h.REPLY_TO: "_INBOX.abc"}, NOW, fallback_id="17")
    assert labels.request_id == "17"
    assert labels.deadline_ms == NOW + 120_000
    assert (labels.priority, labels.user, labels.cost_tokens) == (1, "", 0)


@pytest.mark.parametrize(
    ("headers", "named"),
    [
        ({}, h.REPLY_TO),
        ({h.REPLY_TO: "has space"}, h.REPLY_TO),
        ({h.REPLY_TO: "_INBOX.*"}, h.REPLY_TO),
        ({h.REPLY_TO: "_INBOX.i", h.PRIORITY: "0"}, h.PRIORITY),
        ({h.REPLY_TO: "_INBOX.i", h.PRIORITY: "x"}, h.PRIORITY),
        ({h.REPLY_TO: "_INBOX.i", h.DEADLINE: "tomorrow"}, h.DEADLINE),
        ({h.REPLY_TO: "_INBOX.i", h.DEADLINE: str(NOW + 10_000_000)}, h.DEADLINE),
        ({h.REPLY_TO: "_INBOX.i", h.TOKENS: "0"}, h.TOKENS),
        ({h.REPLY_TO: "_INBOX.i", h.USER: "a.b"}, h.USER),
        ({h.REPLY_TO: "_INBOX.i", h.MSG_ID: "x y"}, h.MSG_ID),
    ],
)
def test_bad_headers_raise_invalid_request_naming_the_header(headers: dict[str, str], named: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_request_headers(headers, NOW, fallback_id="1")
    assert named in info.value.message
    assert info.value.http_status == 400


def test_ttl_rounds_up_to_whole_seconds() -> None:
    assert ttl_header(NOW + 1500, NOW) == "2"
    assert ttl_header(NOW - 5, NOW) == "1"


def test_subjects_round_trip_and_tokens() -> None:
    assert parse_request_subject(request_subject("gemma3-270m", "paid")) == ("gemma3-270m", "paid")
    assert parse_request_subject("iris.req.m") is None
    assert parse_request_subject("iris.req.m.w.x.y") is None
    assert not is_token("a.b") and not is_token("") and not is_token("*")
    assert to_token("mistral:7b.q4") == "mistral_7b_q4" and is_token(to_token("é"))


def test_every_error_code_has_one_http_status_and_class() -> None:
    assert set(HTTP_STATUS) == set(ErrorCode)
    for code in ErrorCode:
        error = IrisError.from_wire(code, "m", 1.0)
        assert error.code is code and error.http_status == HTTP_STATUS[code]
    assert isinstance(IrisError.from_wire(ErrorCode.DEADLINE_EXCEEDED, "late"), DeadlineExceeded)


def test_an_owned_request_id_is_scoped_by_its_owner_in_the_dedupe() -> None:
    """The stream's dedupe is stream-wide: Alice's and Bob's key `k` are two message ids, one request id."""
    assert h.scoped_msg_id("k", "alice") != h.scoped_msg_id("k", "bob")
    assert h.scoped_msg_id("k", None) == "k"
    for owner in ("alice", "bob"):
        headers = {h.REPLY_TO: f"_INBOX.{owner}.x", h.MSG_ID: h.scoped_msg_id("k", owner)}
        assert parse_request_headers(headers, NOW, fallback_id="1", owner=owner).request_id == "k"
    plain = {h.REPLY_TO: "_INBOX.alice.x", h.MSG_ID: "k"}
    assert parse_request_headers(plain, NOW, fallback_id="1", owner="alice").request_id == "k"
    forged = {h.REPLY_TO: "_INBOX.bob.x", h.MSG_ID: h.scoped_msg_id("k", "alice")}
    with pytest.raises(InvalidRequest, match=h.MSG_ID):  # not a token: Bob cannot name Alice's request
        parse_request_headers(forged, NOW, fallback_id="1", owner="bob")
