"""Ollama's `POST /api/show`: what the model is, from the card its worker published (`gateway.model_cards`).

`template`, `model_info` (the GGUF's scalar metadata keys, typed) and `details` (format, family,
parameter size, quantization) come from the GGUF the worker loaded; `parameters` and `modelfile` hold
what Iris applies to every call: `num_ctx` (the context each request gets) and the stop strings of the
model's turn format. A model fronted by `--engine http` shows only its name there. The name comes in
`model` or Ollama's legacy `name`; an unknown model is a 404 naming it, unknown fields a 400.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.http.answer import HttpContext, endpoint
from gateway.http.io import ApiFamily, json_response, read_json
from schemas.errors import InvalidRequest, ModelNotFound
from schemas.model_cards import ModelCard


class OllamaShow(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    model: str = ""
    name: str = ""  # the field's name before Ollama 0.5
    verbose: bool = False  # Ollama adds the tokenizer's arrays; Iris never stores them


_show_decoder = msgspec.json.Decoder(OllamaShow)


def show_routes(ctx: HttpContext) -> list[Route]:
    @endpoint(ctx, ApiFamily.OLLAMA, "/api/show")
    async def show(request: Request) -> Response:
        call = await read_json(request, _show_decoder, ctx.config.max_body_bytes)
        ctx.keys.key_for(request.headers.get("authorization"))
        requested = call.model or call.name
        if not requested:
            raise InvalidRequest("model is required - at $.model")
        card = await ctx.cards.card(ctx.models.resolve(requested))
        if card is None:
            raise ModelNotFound(f"model {requested[:60]!r} not found: no worker of it has published its model card")
        return json_response(show_body(card))

    return [Route("/api/show", show, methods=["POST"])]


def show_body(card: ModelCard) -> dict[str, Any]:
    parameters = _parameters(card)
    return {
        "modelfile": _modelfile(card, parameters),
        "parameters": "\n".join(f"{key:<30} {value}" for key, value in parameters),
        "template": card.template,
        "details": {
            "parent_model": "",
            "format": card.format,
            "family": card.family,
            "families": [card.family] if card.family else None,
            "parameter_size": parameter_size(card.parameter_count),
            "quantization_level": card.quantization,
        },
        "model_info": card.metadata,
        "capabilities": ["completion"],
        "modified_at": datetime.fromtimestamp(card.loaded_ms / 1000, UTC).isoformat().replace("+00:00", "Z"),
    }


def _parameters(card: ModelCard) -> list[tuple[str, str]]:
    parameters = [("num_ctx", str(card.context_per_slot))] if card.context_per_slot else []
    return parameters + [("stop", json.dumps(stop)) for stop in card.stops]


def _modelfile(card: ModelCard, parameters: list[tuple[str, str]]) -> str:
    lines = [f"# Modelfile of {card.model}, served by Iris", f"FROM {card.model}"]
    if card.template:
        lines.append(f'TEMPLATE """{card.template}"""')
    lines += [f"PARAMETER {key} {value}" for key, value in parameters]
    return "\n".join(lines) + "\n"


def parameter_size(count: int) -> str:
    """As Ollama writes it: 7B, 3.2B, 268.10M, 125K; "" when unknown."""
    if count >= 1_000_000_000:
        billions = count / 1e9
        return f"{billions:.0f}B" if billions == int(billions) else f"{billions:.1f}B"
    if count >= 1_000_000:
        return f"{count / 1e6:.2f}M"
    if count >= 1_000:
        return f"{count / 1e3:.0f}K"
    return str(count) if count else ""
