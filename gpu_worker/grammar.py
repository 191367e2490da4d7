"""Structured output as a llama.cpp grammar (GBNF).

`type: "json"` alone is llama.cpp's JSON grammar (an object, bounded whitespace); a JSON schema goes
through llama-cpp-python's port of llama.cpp's JSON-schema-to-grammar converter, so `properties`,
`required`, `enum`, `const`, `anyOf`, `$ref`s inside the schema, string lengths and array bounds hold by
construction. A schema it cannot convert is the client's error, named as such.
"""

from __future__ import annotations

import json

from gpu_worker.engine import EngineInputError
from schemas.messages import OutputFormat


def output_grammar(output: OutputFormat) -> str:
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    if output.json_schema is None:
        return JSON_GBNF
    try:
        return str(json_schema_to_gbnf(json.dumps(output.json_schema)))
    except Exception as exc:  # the converter raises bare Exceptions, KeyErrors, ... on schemas it cannot take
        raise EngineInputError(f"response_format.json_schema cannot be turned into a grammar: {exc!r}") from None
