"""What `FakeEngine` answers when structured output is asked for: a JSON document that is valid for the
schema (or any JSON object), built deterministically from the schema's own keywords, so tests of the
structured-output path get parseable, schema-valid text without a model."""

from __future__ import annotations

import json
from typing import Any

_WORD = "alpha"


def example_document(schema: dict[str, Any] | None) -> str:
    return json.dumps(_instance(schema, schema or {}) if schema is not None else {"answer": _WORD})


def _instance(schema: Any, root: dict[str, Any]) -> Any:
    if not isinstance(schema, dict):
        return None
    if "$ref" in schema:
        return _instance(_resolve(schema["$ref"], root), root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return _instance(schema[key][0], root)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    return _BY_TYPE.get(kind, lambda s, r: None)(schema, root)


def _object(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    properties = schema.get("properties") or {}
    return {name: _instance(sub, root) for name, sub in properties.items()}


def _array(schema: dict[str, Any], root: dict[str, Any]) -> list[Any]:
    return [_instance(schema.get("items", {"type": "string"}), root) for _ in range(max(1, schema.get("minItems", 1)))]


def _string(schema: dict[str, Any], root: dict[str, Any]) -> str:
    low, high = schema.get("minLength", 0), schema.get("maxLength", len(_WORD))
    return (_WORD * (1 + low // len(_WORD)))[: max(low, min(high, len(_WORD)))]


def _number(schema: dict[str, Any], root: dict[str, Any]) -> int:
    low = schema.get("minimum", schema.get("exclusiveMinimum", -1) + 1)
    return int(low) if int(low) == low else int(low) + 1


_BY_TYPE = {
    "object": _object,
    "array": _array,
    "string": _string,
    "integer": _number,
    "number": _number,
    "boolean": lambda s, r: True,
    "null": lambda s, r: None,
}


def _resolve(ref: str, root: dict[str, Any]) -> Any:
    node: Any = root
    for part in ref.removeprefix("#/").split("/"):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node
