"""`iris bench llama-server` end to end at tiny size: a real llama_cpp.server and a real Iris stack on the
tiny random Mistral-shaped model, every round producing tokens in both arms, the JSON written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iris.bench.llama_server import ServerBenchSettings, run_llama_server_bench


@pytest.mark.slow
async def test_llama_server_bench_tiny(tmp_path: Path, tiny_mistral_model: str) -> None:
    settings = ServerBenchSettings(tiny_mistral_model, [1, 2], 8, 1, 1, 0, False, 2)
    out = tmp_path / "llama-server.json"
    report = await run_llama_server_bench(settings, out)
    assert [row["sequences"] for row in report["results"]] == [1, 2]
    for row in report["results"]:
        for arm in ("iris", "server"):
            (only,) = row["rounds"][arm]
            assert only["tokens"] == 8 * row["sequences"], (arm, row)  # each request its max_tokens
        assert row["iris_vs_server"] > 0
    ttft = report["time_to_first_token"]
    assert ttft["requests"] == 2 and ttft["iris"]["p50_ms"] > 0 and ttft["server"]["p50_ms"] > 0
    assert json.loads(out.read_text())["settings"]["model"] == "tiny-mistral.gguf"


def test_server_command_mirrors_the_worker_settings() -> None:
    settings = ServerBenchSettings("/m.gguf", [8], 128, 2, 4, -1, True, 10)
    command = settings.server_command(8123)
    flags = dict(zip(command[3::2], command[4::2], strict=True))
    worker = settings.worker_args(8)
    assert flags["--n_ctx"] == worker[worker.index("--ctx-per-slot") + 1] == "256"
    assert flags["--n_gpu_layers"] == worker[worker.index("--n-gpu-layers") + 1] == "-1"
    assert flags["--n_threads"] == flags["--n_threads_batch"] == worker[worker.index("--threads") + 1] == "4"
    assert flags["--flash_attn"] == "true" and worker[worker.index("--flash-attn") + 1] == "on"
