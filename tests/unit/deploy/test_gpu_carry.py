"""The GPU carry's trim rules keep what a CUDA build of llama-cpp-python needs and drop the bulk, and its
requirement list carries every runtime pin of Iris but the two it replaces (deploy/gpu/trim.py,
deploy/gpu/requirements.py); the report gathers the acceptance ratios (deploy/gpu/report.py)."""

from __future__ import annotations

import importlib.util
import json
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[3]
GPU = ROOT / "deploy" / "gpu"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"gpu_{name}", GPU / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


trim, requirements, report = load("trim"), load("requirements"), load("report")


def test_no_drop_rule_reaches_a_required_path() -> None:
    for required in trim.REQUIRED:
        for dropped in trim.DROP:
            assert not (required == dropped or required.startswith(dropped + "/")), (required, dropped)


def sdist_tree(root: Path) -> None:
    """The shape of the real sdist: every REQUIRED file, cuda sources, and what the trim should drop."""
    for relative in trim.REQUIRED:
        path = root / relative
        target = path / "fattn-vec-f16.cu" if relative.endswith("template-instances") else path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("x")
    for relative in ("ggml/src/ggml-cuda/mmq.cu", "ggml/src/ggml-cpu/ggml-cpu.c", "models/ggml-vocab-llama-spm.gguf",
                     "ggml/src/ggml-vulkan/CMakeLists.txt", "tools/server/server.cpp", "docs/build.md"):  # fmt: skip
        (root / trim.LLAMA / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / trim.LLAMA / relative).write_text("y" * 100)
    (root / ".git").write_text("gitdir: elsewhere")


def test_trim_keeps_cuda_sources_and_drops_models_docs_and_other_backends(tmp_path: Path) -> None:
    sdist_tree(tmp_path)
    removed = trim.trim(tmp_path)
    assert trim.missing(tmp_path) == []
    assert (tmp_path / trim.LLAMA / "ggml/src/ggml-cuda/mmq.cu").is_file()
    assert (tmp_path / trim.LLAMA / "ggml/src/ggml-cpu/ggml-cpu.c").is_file()
    for gone in ("models", "ggml/src/ggml-vulkan", "tools/server", "docs"):
        assert not (tmp_path / trim.LLAMA / gone).exists(), gone
    assert not (tmp_path / ".git").exists()
    assert removed >= 400


def test_missing_names_a_cuda_folder_left_empty(tmp_path: Path) -> None:
    sdist_tree(tmp_path)
    (tmp_path / trim.LLAMA / "ggml/src/ggml-cuda/template-instances/fattn-vec-f16.cu").unlink()
    (tmp_path / trim.LLAMA / "ggml/src/ggml-cuda/ggml-cuda.cu").unlink()
    assert trim.missing(tmp_path) == [f"{trim.LLAMA}/ggml/src/ggml-cuda/ggml-cuda.cu",
                                      f"{trim.LLAMA}/ggml/src/ggml-cuda/template-instances"]  # fmt: skip


def test_requirements_carry_every_runtime_pin_but_llama_and_the_embedded_model() -> None:
    iris = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = {"dependencies": ["jinja2>=2.11.3"], "optional-dependencies": {"server": ["fastapi>=0.100"]}}
    llama = {"build-system": {"requires": ["scikit-build-core[pyproject]>=0.9.2"]}, "project": project}
    wanted = requirements.requirements(iris, llama)
    names = {requirements.name_of(r) for r in wanted}
    for pin in iris["project"]["dependencies"]:
        name = requirements.name_of(pin)
        assert (name in names) != (name in requirements.NOT_CARRIED), pin
    assert {"gguf", "jinja2", "fastapi", "scikit-build-core"} <= names


def test_report_compares_each_ratio_with_its_target(tmp_path: Path) -> None:
    def row(n: int, **figures: float) -> dict[str, float]:
        return {
            "sequences": n,
            "iris_tokens_per_s": 1.0,
            "direct_tokens_per_s": 1.0,
            "server_tokens_per_s": 1.0,
        } | figures

    worker = {
        "results": [
            row(1, iris_vs_direct=0.97, iris_tokens_per_s=100.0),
            row(8, iris_vs_direct=0.9, iris_tokens_per_s=250.0),
        ]
    }
    ttft = {"iris": {"p50_ms": 20.0}, "server": {"p50_ms": 19.0}}
    server = {"results": [row(8, iris_vs_server=2.5)], "time_to_first_token": ttft}
    (tmp_path / "worker.json").write_text(json.dumps(worker))
    (tmp_path / "llama-server.json").write_text(json.dumps(server))
    (tmp_path / "gpu-memory.csv").write_text("1000\n15200\n900\n")
    assert report.main([str(tmp_path)]) == 0
    gathered = json.loads((tmp_path / "report.json").read_text())
    assert gathered["acceptance"]["single_stream_iris_vs_direct"]["met"] is True
    assert gathered["acceptance"]["iris_8_slots_vs_1_slot"] == {"value": 2.5, "target": 3.0, "met": False}
    assert gathered["acceptance"]["iris_vs_llama_cpp_server_at_8"]["met"] is True
    assert gathered["gpu_memory_mib"] == {"peak": 15200, "idle": 900, "samples": 3}
    assert "| iris_8_slots_vs_1_slot | 2.5 | 3.0 | NO |" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("script", ["pack.sh", "run.sh", "checks.sh"])
def test_scripts_parse(script: str) -> None:
    import subprocess

    subprocess.run(["bash", "-n", str(GPU / script)], check=True)
