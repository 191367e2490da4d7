"""Structured output as a llama.cpp grammar (GBNF).

`type: "json"` alone is llama.cpp's JSON grammar (an object, bounded whitespace); a JSON schema goes
through llama-cpp-python's port of llama.cpp's JSON-schema-to-grammar converter, so `properties`,
`required`, `enum`, `const`, `anyOf`, local `$ref`s, string lengths and patterns and array bounds hold
by construction. Integer `minimum`/`maximum` (which that port leaves out) are added here as digit-range
rules, and a string's characters are llama.cpp's (that port lets raw control characters, such as a
newline, into a string, which is not JSON). Keywords no grammar here enforces (`multipleOf`,
`uniqueItems`, number bounds, formats other than date/time/uuid, ...) are refused, naming the keyword:
every answer that comes back validates.
"""

from __future__ import annotations

import json
from typing import Any

from gpu_worker.engines.protocol import EngineInputError
from schemas.messages import OutputFormat

MAX_INT_DIGITS = 16  # unbounded sides of an integer range: as llama.cpp's own integer rule
_UNENFORCED = (
    "multipleOf",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "not",
    "if",
    "then",
    "else",
    "patternProperties",
    "propertyNames",
    "dependentRequired",
    "dependentSchemas",
    "contains",
    "minContains",
    "maxContains",
    "unevaluatedProperties",
    "unevaluatedItems",
)
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
# llama.cpp's json-schema-to-grammar `char`: JSON forbids raw U+0000-U+001F in a string (DEL stays out too)
JSON_CHAR = r'[^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'
_FORMATS = ("date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5")


def output_grammar(output: OutputFormat) -> str:
    from llama_cpp.llama_grammar import JSON_GBNF

    if output.json_schema is None:
        return JSON_GBNF
    check_enforceable(output.json_schema, "$.response_format.json_schema")
    try:
        return _convert(output.json_schema)
    except Exception as exc:  # the converter raises bare Exceptions, KeyErrors, ... on schemas it cannot take
        raise EngineInputError(f"response_format.json_schema cannot be turned into a grammar: {exc!r}") from None


def check_enforceable(schema: Any, path: str) -> None:
    """Raise `EngineInputError` naming the first keyword the grammar would not enforce."""
    if isinstance(schema, list):
        for i, item in enumerate(schema):
            check_enforceable(item, f"{path}[{i}]")
        return
    if not isinstance(schema, dict):
        return
    for keyword in _UNENFORCED:
        if keyword in schema:
            raise EngineInputError(f"JSON schema keyword {keyword!r} is not supported by Iris - at {path}.{keyword}")
    if schema.get("type") == "number" and any(b in schema for b in _BOUNDS):
        raise EngineInputError(f"minimum/maximum on a number are not supported (on an integer they are) - at {path}")
    if "format" in schema and schema["format"] not in _FORMATS:
        raise EngineInputError(f"string format {schema['format']!r} is not supported by Iris - at {path}.format")
    for key, value in schema.items():
        if key not in ("enum", "const", "default", "examples"):  # values there are data, not schemas
            check_enforceable(value, f"{path}.{key}")


def _convert(schema: dict[str, Any]) -> str:
    from llama_cpp.llama_grammar import RESERVED_NAMES, BuiltinRule, SchemaConverter

    class Converter(SchemaConverter):  # type: ignore[misc]
        def _add_primitive(self, name: str, rule: BuiltinRule) -> str:
            return str(super()._add_primitive(name, BuiltinRule(JSON_CHAR, []) if name == "char" else rule))

        def visit(self, schema: dict[str, Any], name: str) -> str:
            if schema.get("type") == "integer" and any(b in schema for b in _BOUNDS):
                rule_name = name + "-" if name in RESERVED_NAMES else name or "root"
                return str(self._add_rule(rule_name, f"({integer_range_rule(*_int_bounds(schema))}) space"))
            return str(super().visit(schema, name))

    converter = Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    resolved = converter.resolve_refs(json.loads(json.dumps(schema)), "input")
    converter.visit(resolved, "")
    return str(converter.format_grammar())


def _int_bounds(schema: dict[str, Any]) -> tuple[int | None, int | None]:
    low = schema.get("minimum")
    if "exclusiveMinimum" in schema:
        low = schema["exclusiveMinimum"] + 1
    high = schema.get("maximum")
    if "exclusiveMaximum" in schema:
        high = schema["exclusiveMaximum"] - 1
    low = None if low is None else -(-low // 1)  # ceil: 2.5 → 3
    high = None if high is None else high // 1
    if low is not None and high is not None and low > high:
        raise EngineInputError(f"an integer range [{low}, {high}] holds no value")
    return (None if low is None else int(low)), (None if high is None else int(high))


def integer_range_rule(low: int | None, high: int | None) -> str:
    """GBNF alternatives matching exactly the decimal integers in [low, high] (None: unbounded)."""
    parts = []
    if low is None or low < 0:  # the negative side, as "-" and a magnitude
        top = None if low is None else -low
        bottom = 1 if high is None or high >= 0 else -high
        parts.append(f'"-" ({_magnitudes(bottom, top)})')
    if high is None or high >= 0:
        parts.append(_magnitudes(max(0, low or 0), high))
    return " | ".join(parts)


def _magnitudes(low: int, high: int | None) -> str:
    """Alternatives for the non-negative integers in [low, high], no leading zeros."""
    if high is None:
        digits = len(str(low))
        more = f"[1-9] [0-9]{{{digits},{MAX_INT_DIGITS - 1}}}" if digits < MAX_INT_DIGITS else ""
        return " | ".join(p for p in (_magnitudes(low, 10**digits - 1), more) if p)
    alternatives = []
    start = low
    while start <= high:
        end = min(high, 10 ** len(str(start)) - 1)  # same number of digits as `start`
        alternatives.append(_same_length(str(start), str(end)))
        start = end + 1
    return " | ".join(alternatives)


def _same_length(low: str, high: str) -> str:
    if len(low) == 1:
        return f"[{low}-{high}]"
    if low[0] == high[0]:
        return f'"{low[0]}" ({_same_length(low[1:], high[1:])})'
    rest = len(low) - 1
    alternatives = [f'"{low[0]}" ({_same_length(low[1:], "9" * rest)})']
    if int(low[0]) + 1 <= int(high[0]) - 1:
        alternatives.append(f"[{int(low[0]) + 1}-{int(high[0]) - 1}]" + " [0-9]" * rest)
    alternatives.append(f'"{high[0]}" ({_same_length("0" * rest, high[1:])})')
    return " | ".join(alternatives)
