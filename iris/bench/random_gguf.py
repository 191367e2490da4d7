"""Write a random-weight GGUF with Mistral's architecture, tokenizer type and chat template.

Mistral 7B is `llama` architecture in GGUF, with a SentencePiece (`llama`) vocabulary and the
`[INST] … [/INST]` chat template. `MISTRAL_7B` has its exact shape, so `iris bench worker --model` can
measure a GPU on the production model's compute and memory traffic without downloading it; `TINY` has
the same structure at a few MB, for tests. The vocabulary is synthetic (specials, the 256 byte tokens
SentencePiece falls back to, then characters and short words with `▁` for a leading space) and weights are
random: the text is nonsense, the prompt formatting and the arithmetic are the real thing.
Needs the `gguf` package (a dev dependency: `./install.sh --dev`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
_WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had by "
    "word but not what all were we when your can said there use an each which she do how their if will up "
    "other about out many then them these so some her would make like him into time has look two more write "
    "go see number no way could people my than first water been call who oil its now find long down day did "
    "get come made may part story light house keeper sky blue why name three copper prime summarize"
).split()


@dataclass(frozen=True)
class LlamaShape:
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_ctx_train: int
    rope_theta: float


MISTRAL_7B = LlamaShape(32_000, 4096, 32, 32, 8, 14_336, 32_768, 1_000_000.0)
TINY = LlamaShape(1024, 64, 2, 4, 2, 128, 4096, 1_000_000.0)
SHAPES = {"mistral-7b": MISTRAL_7B, "tiny": TINY}


def sentencepiece_vocab(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types of a synthetic SentencePiece vocabulary of exactly `n_vocab` tokens."""
    import gguf

    kinds = gguf.TokenType
    tokens = ["<unk>", "<s>", "</s>"]
    types = [kinds.UNKNOWN, kinds.CONTROL, kinds.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [kinds.BYTE] * 256
    pieces = [chr(c) for c in range(32, 127)] + ["▁" + chr(c) for c in range(33, 127)]
    pieces += ["▁" + w for w in _WORDS] + [w for w in _WORDS] + ["▁[", "INST", "]", "▁[/", "▁"]
    for piece in dict.fromkeys(pieces):
        if len(tokens) >= n_vocab:
            break
        tokens.append(piece)
        types.append(kinds.NORMAL)
    filler = 0
    while len(tokens) < n_vocab:
        tokens.append(f"▁w{filler}")
        types.append(kinds.NORMAL)
        filler += 1
    scores = [0.0] * 259 + [-float(i) for i in range(len(tokens) - 259)]  # longer-known pieces win merges
    return tokens, scores, [int(t) for t in types]


def write_llama_gguf(path: Path, shape: LlamaShape, name: str = "mistral-random", seed: int = 0) -> Path:
    """Write the model (F16 weights, F32 norms), tensor by tensor. Returns `path`."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    _write_metadata(writer, shape, name)
    head_dim = shape.n_embd // shape.n_head
    n_embd_kv = head_dim * shape.n_head_kv
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (shape.n_vocab, shape.n_embd)}
    for layer in range(shape.n_layer):
        prefix = f"blk.{layer}."
        shapes |= {
            prefix + "attn_norm.weight": (shape.n_embd,),
            prefix + "attn_q.weight": (shape.n_embd, shape.n_embd),
            prefix + "attn_k.weight": (n_embd_kv, shape.n_embd),
            prefix + "attn_v.weight": (n_embd_kv, shape.n_embd),
            prefix + "attn_output.weight": (shape.n_embd, shape.n_embd),
            prefix + "ffn_norm.weight": (shape.n_embd,),
            prefix + "ffn_gate.weight": (shape.n_ff, shape.n_embd),
            prefix + "ffn_up.weight": (shape.n_ff, shape.n_embd),
            prefix + "ffn_down.weight": (shape.n_embd, shape.n_ff),
        }
    shapes |= {"output_norm.weight": (shape.n_embd,), "output.weight": (shape.n_vocab, shape.n_embd)}
    for tensor_name, dims in shapes.items():
        dtype = np.float32 if len(dims) == 1 else np.float16
        writer.add_tensor_info(tensor_name, dims, np.dtype(dtype), int(np.prod(dims)) * np.dtype(dtype).itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for dims in shapes.values():
        writer.write_tensor_data(_random_tensor(rng, dims, shape.n_embd))
    writer.close()
    return path


def _random_tensor(rng: Any, dims: tuple[int, ...], n_embd: int) -> Any:
    import numpy as np

    if len(dims) == 1:
        return np.ones(dims, dtype=np.float32)  # norms: identity scale keeps activations finite
    scale = 1.0 / np.sqrt(dims[1])
    return (rng.standard_normal(dims, dtype=np.float32) * scale).astype(np.float16)


def _write_metadata(writer: Any, shape: LlamaShape, name: str) -> None:
    writer.add_name(name)
    writer.add_context_length(shape.n_ctx_train)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layer)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_rope_dimension_count(shape.n_embd // shape.n_head)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(shape.n_vocab)
    writer.add_file_type(1)  # mostly F16
    tokens, scores, types = sentencepiece_vocab(shape.n_vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(MISTRAL_CHAT_TEMPLATE)
