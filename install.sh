#!/usr/bin/env bash
# Install Iris into ./.venv (created if missing). `./install.sh --dev` adds the test tools, and as root on
# Debian/Ubuntu also Chromium and its driver (apt) for the status page's browser test when they are missing.
#
# llama-cpp-python has no wheel on PyPI: pip builds it from source (about 5-10 minutes on 2 cores; pip
# caches the wheel). The default CPU build is native but without AMX instructions: on machines whose
# kernel or sandbox does not grant AMX tile state, ggml's AMX kernels crash the first decode.
# For an NVIDIA GPU:  CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90" ./install.sh
set -euo pipefail
cd "$(dirname "$0")"
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
export CMAKE_ARGS="${CMAKE_ARGS:--DCMAKE_C_FLAGS='$no_amx' -DCMAKE_CXX_FLAGS='$no_amx'}"
echo "install: building llama-cpp-python with CMAKE_ARGS=$CMAKE_ARGS (first time: several minutes)" >&2
.venv/bin/python -m pip install --quiet -e ".$extras"
if [ -n "$extras" ] && ! command -v chromedriver >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "install: installing chromium and chromium-driver (apt) for the status page's browser test" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q chromium chromium-driver >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; } \
        || echo "install: could not install chromium; the browser test will be skipped" >&2
fi
echo "install: done; commands are in .venv/bin (iris, pytest)" >&2
