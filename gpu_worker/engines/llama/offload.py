"""GPU offload options for llama.cpp, checked against this build and machine before a model loads.

`check_offload` is pure (the build's facts are passed in), so every refusal is unit-tested without a GPU:
a worker asked for CUDA offload on a CPU-only build, for a `--main-gpu` it does not have, or for a
`--tensor-split` longer than its GPU count stops at start with an `OffloadError` naming the flag, instead
of silently running on the CPU at a tenth of the expected speed.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Literal

FlashAttn = Literal["auto", "on", "off"]
_GPU_DEVICE_TYPES = (1, 2)  # ggml_backend_dev_type: GPU, IGPU


class OffloadError(ValueError):
    """The GPU options cannot be honoured by this llama-cpp-python build or this machine."""


@dataclass(frozen=True)
class Offload:
    n_gpu_layers: int = 0  # -1 = every layer
    main_gpu: int = 0
    tensor_split: tuple[float, ...] = ()  # proportions per GPU, e.g. (3, 1)
    flash_attn: FlashAttn = "auto"

    @property
    def wants_gpu(self) -> bool:
        return self.n_gpu_layers != 0


@dataclass(frozen=True)
class Devices:
    """What the loaded llama.cpp library offers."""

    supports_gpu_offload: bool
    gpu_names: tuple[str, ...]


def parse_tensor_split(text: str) -> tuple[float, ...]:
    """`"3,1"` → (3.0, 1.0); empty → ()."""
    if not text.strip():
        return ()
    try:
        parts = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise OffloadError(f"--tensor-split {text!r}: expected comma-separated numbers such as 3,1") from None
    if any(part < 0 for part in parts) or sum(parts) <= 0:
        raise OffloadError(f"--tensor-split {text!r}: proportions must be >= 0 with a positive sum")
    return parts


def check_offload(offload: Offload, devices: Devices) -> None:
    if not offload.wants_gpu:
        if offload.main_gpu or offload.tensor_split:
            raise OffloadError("--main-gpu / --tensor-split need GPU offload: set --n-gpu-layers (-1 = all layers)")
        return
    if not devices.supports_gpu_offload:
        raise OffloadError(
            f"--n-gpu-layers {offload.n_gpu_layers} asks for GPU offload, but this llama-cpp-python build has no GPU "
            "backend (rebuild: CMAKE_ARGS='-DGGML_CUDA=on' ./install.sh), or run with --n-gpu-layers 0"
        )
    n_gpus = len(devices.gpu_names)
    if n_gpus == 0:
        raise OffloadError(f"--n-gpu-layers {offload.n_gpu_layers} asks for GPU offload, but no GPU is visible")
    if not 0 <= offload.main_gpu < n_gpus:
        raise OffloadError(f"--main-gpu {offload.main_gpu}: this machine has {n_gpus} GPU(s), numbered from 0")
    if len(offload.tensor_split) > n_gpus:
        raise OffloadError(
            f"--tensor-split has {len(offload.tensor_split)} proportions, but this machine has {n_gpus} GPU(s)"
        )


def probe_devices() -> Devices:
    """Ask the loaded llama.cpp (ggml) library which backends it has."""
    import llama_cpp.llama_cpp as llama

    lib = llama._lib
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_name.restype = ctypes.c_char_p
    lib.ggml_backend_dev_name.argtypes = [ctypes.c_void_p]
    names = []
    for index in range(lib.ggml_backend_dev_count()):
        device = lib.ggml_backend_dev_get(index)
        if lib.ggml_backend_dev_type(device) in _GPU_DEVICE_TYPES:
            names.append(lib.ggml_backend_dev_name(device).decode())
    return Devices(bool(llama.llama_supports_gpu_offload()), tuple(names))


def flash_attn_type(value: FlashAttn) -> int:
    import llama_cpp.llama_cpp as llama

    return {
        "auto": llama.LLAMA_FLASH_ATTN_TYPE_AUTO,
        "on": llama.LLAMA_FLASH_ATTN_TYPE_ENABLED,
        "off": llama.LLAMA_FLASH_ATTN_TYPE_DISABLED,
    }[value]
