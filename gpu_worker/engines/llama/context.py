"""Loading a GGUF model and creating its batched context through llama-cpp-python's low-level API.

Shared by `LlamaCppEngine` and `iris bench worker`'s direct arm, so both run the very same context
settings: `n_seq_max` = slots, `n_ctx` = slots × context per slot, batch capacity ≥ slots, and the GPU
options after `check_offload` has accepted them.
"""

from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass
from typing import Any

from llama_cpp.llama_cpp import llama_log_callback

from gpu_worker.engines.llama.offload import Offload, check_offload, flash_attn_type, probe_devices

MIN_BATCH_TOKENS = 512
_GGML_LOG_LEVEL_ERROR = 4  # ggml_log_level: NONE, DEBUG, INFO, WARN, ERROR, CONT


@llama_log_callback  # type: ignore[untyped-decorator]
def _errors_only(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    """llama.cpp logs every tensor it loads; only its errors reach our stderr."""
    if level == _GGML_LOG_LEVEL_ERROR:
        print(text.decode(errors="replace"), end="", file=sys.stderr, flush=True)


@dataclass
class LoadedModel:
    model: Any
    vocab: Any
    on_gpu: bool
    tensor_split: Any = None  # the C array the model params point at, kept alive with the model

    def free(self) -> None:
        import llama_cpp.llama_cpp as llama

        if self.model is not None:
            llama.llama_model_free(self.model)
            self.model = None


def load_model(path: str, offload: Offload) -> LoadedModel:
    """Check the GPU options against this build, then load the weights (offloaded as asked)."""
    import llama_cpp.llama_cpp as llama

    llama.llama_log_set(_errors_only, ctypes.c_void_p(0))
    llama.llama_backend_init()
    devices = probe_devices()
    check_offload(offload, devices)
    params = llama.llama_model_default_params()
    params.n_gpu_layers = offload.n_gpu_layers
    params.main_gpu = offload.main_gpu
    split = None
    if offload.tensor_split:
        split = (ctypes.c_float * llama.llama_max_devices())(*offload.tensor_split)
        params.tensor_split = split
    model = llama.llama_model_load_from_file(path.encode(), params)
    if not model:
        raise RuntimeError(f"llama.cpp could not load the model {path}")
    on_gpu = offload.wants_gpu and bool(devices.gpu_names)
    return LoadedModel(model, llama.llama_model_get_vocab(model), on_gpu, split)


def batch_tokens(slots: int) -> int:
    """Tokens one decode may carry: every slot's next token plus room for prompt chunks."""
    return max(MIN_BATCH_TOKENS, slots)


def new_context(
    loaded: LoadedModel,
    slots: int,
    ctx_per_slot: int,
    n_threads: int,
    offload: Offload,
    kv_unified: bool,
    max_suspended: int = 0,
) -> Any:
    """Suspended sequences take sequence ids beyond `slots`; in one unified cache they share the running
    ones' cells (kept while there is room), with a cache per sequence each gets its own."""
    import llama_cpp.llama_cpp as llama

    params = llama.llama_context_default_params()
    n_seq = slots + max_suspended
    params.n_ctx = ctx_per_slot * (slots if kv_unified else n_seq)
    params.n_seq_max = n_seq
    params.kv_unified = kv_unified
    params.n_batch = params.n_ubatch = batch_tokens(slots)
    params.n_threads = params.n_threads_batch = n_threads
    params.flash_attn_type = flash_attn_type(offload.flash_attn)
    params.no_perf = True
    ctx = llama.llama_init_from_model(loaded.model, params)
    if not ctx:
        raise RuntimeError(
            f"llama.cpp could not create a context of {slots} x {ctx_per_slot} tokens for {n_seq} sequences"
        )
    return ctx
