"""Structured-output grammars: integer ranges match exactly their integers, unenforceable keywords are
refused by name, and schemas convert into grammars llama.cpp parses."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_worker.engines.llama.grammar import MAX_INT_DIGITS, check_enforceable, integer_range_rule, output_grammar
from gpu_worker.engines.protocol import EngineInputError
from schemas.messages import OutputFormat


def as_regex(rule: str) -> re.Pattern[str]:
    """The GBNF subset `integer_range_rule` writes ("x", [a-b], {m,n}, |, parentheses) as a regex."""
    return re.compile(re.sub(r'"([^"]*)"', lambda m: re.escape(m.group(1)), rule).replace(" ", ""))


@settings(max_examples=300)
@given(st.integers(-5000, 5000), st.integers(0, 3000), st.integers(-6000, 6000))
def test_integer_range_matches_exactly_its_integers(low: int, width: int, probe: int) -> None:
    high = low + width
    pattern = as_regex(integer_range_rule(low, high))
    assert bool(pattern.fullmatch(str(probe))) == (low <= probe <= high)
    assert pattern.fullmatch(str(low)) and pattern.fullmatch(str(high))


@given(st.integers(-3000, 3000), st.integers(-(10**6), 10**6))
def test_half_open_ranges(bound: int, probe: int) -> None:
    assert bool(as_regex(integer_range_rule(bound, None)).fullmatch(str(probe))) == (probe >= bound)
    assert bool(as_regex(integer_range_rule(None, bound)).fullmatch(str(probe))) == (probe <= bound)


def test_no_leading_zeros_and_bounded_length() -> None:
    pattern = as_regex(integer_range_rule(0, None))
    assert not pattern.fullmatch("007") and pattern.fullmatch("0") and pattern.fullmatch("9" * MAX_INT_DIGITS)
    assert not pattern.fullmatch("9" * (MAX_INT_DIGITS + 1))


@pytest.mark.parametrize(
    "schema, keyword",
    [
        ({"type": "integer", "multipleOf": 3}, "multipleOf"),
        ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "uniqueItems"),
        ({"type": "object", "properties": {"x": {"type": "number", "minimum": 0}}}, "minimum/maximum on a number"),
        ({"type": "string", "format": "email"}, "email"),
        ({"type": "object", "properties": {"a": {"not": {"type": "null"}}}}, "'not'"),
    ],
)
def test_unenforceable_keywords_are_refused_by_name(schema: dict[str, object], keyword: str) -> None:
    with pytest.raises(EngineInputError, match=re.escape(keyword)):
        check_enforceable(schema, "$.response_format.json_schema")


def test_enum_values_are_data_not_schemas() -> None:
    check_enforceable({"enum": [{"not": 1}, {"format": "email"}]}, "$")


def test_schema_grammar_holds_the_integer_range() -> None:
    age = {"type": "integer", "minimum": 18, "maximum": 99}
    grammar = output_grammar(OutputFormat(json_schema={"type": "object", "properties": {"age": age}}))
    assert '"1" ([8-9])' in grammar and '"9" ([0-9])' in grammar
