"""GPU options are refused at start, with the flag named, when this build or machine cannot honour them."""

from __future__ import annotations

import pytest

from gpu_worker.engines.llama.offload import Devices, Offload, OffloadError, check_offload, parse_tensor_split

CPU_BUILD = Devices(supports_gpu_offload=False, gpu_names=())
TWO_GPUS = Devices(supports_gpu_offload=True, gpu_names=("CUDA0", "CUDA1"))
CUDA_BUILD_NO_GPU = Devices(supports_gpu_offload=True, gpu_names=())


def test_cpu_only_is_fine_anywhere() -> None:
    check_offload(Offload(), CPU_BUILD)
    check_offload(Offload(), TWO_GPUS)


def test_full_offload_with_split_on_two_gpus_is_accepted() -> None:
    check_offload(Offload(n_gpu_layers=-1, main_gpu=1, tensor_split=(3.0, 1.0), flash_attn="on"), TWO_GPUS)


@pytest.mark.parametrize(
    ("offload", "devices", "named"),
    [
        (Offload(n_gpu_layers=-1), CPU_BUILD, "--n-gpu-layers -1"),
        (Offload(n_gpu_layers=33), CUDA_BUILD_NO_GPU, "no GPU is visible"),
        (Offload(n_gpu_layers=-1, main_gpu=2), TWO_GPUS, "--main-gpu 2"),
        (Offload(n_gpu_layers=-1, tensor_split=(1.0, 1.0, 1.0)), TWO_GPUS, "--tensor-split has 3"),
        (Offload(main_gpu=1), TWO_GPUS, "--main-gpu / --tensor-split need GPU offload"),
    ],
)
def test_refusals_name_the_option(offload: Offload, devices: Devices, named: str) -> None:
    with pytest.raises(OffloadError, match=named.replace("(", r"\(")):
        check_offload(offload, devices)


def test_parse_tensor_split() -> None:
    assert parse_tensor_split("") == ()
    assert parse_tensor_split("3,1") == (3.0, 1.0)
    with pytest.raises(OffloadError, match="--tensor-split"):
        parse_tensor_split("3,x")
    with pytest.raises(OffloadError, match="positive sum"):
        parse_tensor_split("0,0")
