"""Trim a llama-cpp-python sdist to what a CUDA build needs, so the GPU carry fits in 64 MiB.

The sdist (~73 MiB) vendors all of llama.cpp: vocabulary models, docs, examples, tests, tools and every
ggml backend. llama-cpp-python builds llama.cpp as a subproject (examples, tests and tools stay off) plus
`tools/mtmd`, with the CPU backend always and CUDA when `GGML_CUDA=on`; ggml adds a backend folder only
when its option is on. `DROP` removes the rest; `REQUIRED` are the files a CUDA build cannot do without,
and `missing()` says which of them a tree lacks, so a rule that cuts too deep fails the pack, not the GPU run.

Usage: python deploy/gpu/trim.py SDIST_DIR   (trims in place, prints bytes removed, exits 1 if anything
REQUIRED is missing afterwards).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

LLAMA = "vendor/llama.cpp"
_UNUSED_BACKENDS = (
    "cann", "et", "hexagon", "metal", "musa", "opencl", "openvino", "sycl", "virtgpu", "vulkan", "webgpu",
    "zdnn", "zendnn",
)  # fmt: skip
_UNUSED_TOOLS = (
    "batched-bench", "cli", "completion", "cvector-generator", "export-lora", "fit-params", "gguf-split",
    "imatrix", "llama-bench", "perplexity", "quantize", "results", "rpc", "server", "tokenize", "tts", "tuning", "ui",
)  # fmt: skip
DROP = (
    ".git", ".github", "docs", "docker", "examples", "tests",
    *(f"{LLAMA}/{name}" for name in (
        ".git", ".github", ".devops", ".gemini", ".pi", "app", "benches", "ci", "conversion", "docs", "examples",
        "gguf-py", "grammars", "media", "models", "pocs", "requirements", "scripts", "skills", "tests",
    )),
    *(f"{LLAMA}/ggml/src/ggml-{name}" for name in _UNUSED_BACKENDS),
    *(f"{LLAMA}/tools/{name}" for name in _UNUSED_TOOLS),
)  # fmt: skip
REQUIRED = (
    "pyproject.toml",
    "CMakeLists.txt",
    "llama_cpp/__init__.py",
    "llama_cpp/server/__main__.py",
    f"{LLAMA}/CMakeLists.txt",
    f"{LLAMA}/src/llama.cpp",
    f"{LLAMA}/common/CMakeLists.txt",
    f"{LLAMA}/tools/mtmd/CMakeLists.txt",
    f"{LLAMA}/ggml/CMakeLists.txt",
    f"{LLAMA}/ggml/src/CMakeLists.txt",
    f"{LLAMA}/ggml/src/ggml-cpu/CMakeLists.txt",
    f"{LLAMA}/ggml/src/ggml-cuda/CMakeLists.txt",
    f"{LLAMA}/ggml/src/ggml-cuda/ggml-cuda.cu",
    f"{LLAMA}/ggml/src/ggml-cuda/template-instances",
    f"{LLAMA}/ggml/include/ggml-cuda.h",
)


def trim(root: Path) -> int:
    """Remove every `DROP` path under `root`; returns the bytes removed."""
    removed = 0
    for relative in DROP:
        path = root / relative
        if path.is_dir() and not path.is_symlink():
            removed += sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            removed += path.lstat().st_size
            path.unlink()
    return removed


def missing(root: Path) -> list[str]:
    """The `REQUIRED` paths `root` lacks (a folder counts only if it holds a file)."""
    lacking = []
    for relative in REQUIRED:
        path = root / relative
        present = any(p.is_file() for p in path.rglob("*")) if path.is_dir() else path.is_file()
        if not present:
            lacking.append(relative)
    return lacking


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python deploy/gpu/trim.py SDIST_DIR", file=sys.stderr)
        return 2
    root = Path(argv[0])
    print(f"trim: removed {trim(root) / 2**20:.1f} MiB from {root}")
    lacking = missing(root)
    for relative in lacking:
        print(f"trim: MISSING after trim: {relative}", file=sys.stderr)
    return 1 if lacking else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
