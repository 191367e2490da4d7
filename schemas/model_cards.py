"""What a worker tells the gateway about the model it serves: one `ModelCard` per model in KV bucket
`IRIS_MODELS` (key = model name), written by each worker once its model is loaded and read by the gateway
for Ollama's `/api/show`. The broker creates the bucket with the others; workers of one model write the
same card, so the last one to start wins and nothing else depends on it.

`metadata` holds the GGUF's scalar keys (`general.architecture`, `<arch>.context_length`, ...) typed as
the GGUF has them; long arrays (the tokenizer's vocabulary) are left out, so a card stays a few KB.
"""

from __future__ import annotations

import math

import msgspec
from nats.js.api import KeyValueConfig, StorageType

from schemas.subjects import MODEL_BUCKET

MetadataValue = str | int | float | bool
MAX_METADATA_KEYS = 256
MAX_METADATA_VALUE_CHARS = 1024


class ModelCard(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    model: str  # the served name (a subject token)
    format: str  # "gguf", or "" when the worker fronts another server
    family: str  # the GGUF's general.architecture ("gemma3", "llama"), "" when unknown
    parameter_count: int  # 0 when unknown
    quantization: str  # "Q4_K_M", "F16", ..., "" when unknown
    context_per_slot: int  # tokens of context each request gets (prompt + answer); 0 when unknown
    template: str = ""  # the model's own chat template (Jinja), "" when it has none
    stops: list[str] = []  # stop strings Iris adds to every chat answer (the fallback template's turn markers)
    metadata: dict[str, MetadataValue] = {}
    loaded_ms: int = 0  # Unix ms when the worker loaded the model


def model_bucket_config(replicas: int) -> KeyValueConfig:
    return KeyValueConfig(bucket=MODEL_BUCKET, history=1, storage=StorageType.FILE, replicas=replicas)


def typed_metadata(raw: dict[str, str]) -> dict[str, MetadataValue]:
    """GGUF values as llama.cpp prints them, typed back (ints, floats, bools), bounded in count and size."""
    typed: dict[str, MetadataValue] = {}
    for key, text in sorted(raw.items()):
        if len(typed) >= MAX_METADATA_KEYS:
            break
        if len(text) > MAX_METADATA_VALUE_CHARS or text.startswith("["):
            continue  # arrays (vocabularies, merges) and huge strings: not for a model card
        typed[key] = _typed(text)
    return typed


def _typed(text: str) -> MetadataValue:
    if text in ("true", "false"):
        return text == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text  # JSON has no NaN: "nan" stays a string


model_card_decoder = msgspec.json.Decoder(ModelCard)
