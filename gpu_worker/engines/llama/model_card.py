"""A loaded GGUF model's `ModelCard` (`schemas.model_cards`): its metadata keys as llama.cpp read them,
parameter count, quantization (`general.file_type`), the context each slot gets and its chat template."""

from __future__ import annotations

import ctypes
from typing import Any

from runtime.clock import now_ms
from schemas.model_cards import ModelCard, typed_metadata

TEMPLATE_KEY = "tokenizer.chat_template"
# llama.cpp's `llama_ftype` values (GGUF `general.file_type`) under the names Ollama reports.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
}  # fmt: skip


def gguf_metadata(model: Any) -> dict[str, str]:
    """Every metadata key of a loaded model with its value as llama.cpp prints it."""
    import llama_cpp.llama_cpp as llama

    metadata: dict[str, str] = {}
    size = 1 << 16  # the chat template can be long; llama.cpp tells us when a value needs more
    buffer = ctypes.create_string_buffer(size)
    for i in range(llama.llama_model_meta_count(model)):
        n = llama.llama_model_meta_key_by_index(model, i, buffer, size)
        if n < 0 or n >= size:
            continue
        key = buffer.value.decode(errors="replace")
        n = llama.llama_model_meta_val_str_by_index(model, i, buffer, size)
        if n >= size:
            bigger = ctypes.create_string_buffer(n + 1)
            n = llama.llama_model_meta_val_str_by_index(model, i, bigger, n + 1)
            metadata[key] = bigger.value.decode(errors="replace")
        elif n >= 0:
            metadata[key] = buffer.value.decode(errors="replace")
    return metadata


def llama_model_card(model: Any, model_name: str, ctx_per_slot: int, template: str, stops: list[str]) -> ModelCard:
    import llama_cpp.llama_cpp as llama

    raw = gguf_metadata(model)
    raw.pop(TEMPLATE_KEY, None)  # it is the card's `template`
    metadata = typed_metadata(raw)
    n_params = int(llama.llama_model_n_params(model))
    metadata.setdefault("general.parameter_count", n_params)  # Ollama shows it; llama.cpp counts it
    file_type = metadata.get("general.file_type")
    return ModelCard(
        model=model_name,
        format="gguf",
        family=str(metadata.get("general.architecture", "")),
        parameter_count=n_params,
        quantization=FILE_TYPES.get(file_type, str(file_type)) if isinstance(file_type, int) else "",
        context_per_slot=ctx_per_slot,
        template=template,
        stops=stops,
        metadata=metadata,
        loaded_ms=now_ms(),
    )
