"""End-to-end with the real embedded model through llama-cpp-python, services as real processes:
streamed answers, a worker killed with SIGKILL mid-generation, the raw nats-py example script."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from gpu_worker.embedded_model import EMBEDDED_MODEL_NAME
from gpu_worker.engines.llama.engine import LlamaCppEngine
from iris.launch.nats_server import NatsServer
from iris.sdk.client import Client
from schemas.messages import GenerateRequest, lease_decoder
from schemas.subjects import LEASE_BUCKET
from tests.conftest import Processes
from tests.integration.services import broker, wait_for_models, wait_stream_empty, worker

pytestmark = pytest.mark.slow  # the real model (or a cluster) in real processes

MODEL = EMBEDDED_MODEL_NAME
PROMPT = "Write a short story about a lighthouse keeper."
REPO = Path(__file__).resolve().parents[3]


def start_llama_worker(processes: Processes, url: str, worker_id: str) -> subprocess.Popen[bytes]:
    return processes.start(
        worker_id, "gpu_worker", "--nats", url, "--engine", "llama", "--worker-id", worker_id, "--threads", "1"
    )


async def test_stream_answer_from_real_model(nats_server: NatsServer, nc: NATS, embedded_model: str) -> None:
    engine = LlamaCppEngine(embedded_model, MODEL, n_threads=2)
    async with broker(nats_server.url), worker(nats_server.url, engine, "w1"):
        generation = Client(nc).generate(
            messages=[{"role": "user", "content": "Why is the sky blue?"}], max_tokens=24, temperature=0
        )
        chunks = [chunk async for chunk in generation]
    result = generation.result
    assert result is not None
    assert result.text == "".join(c.text for c in chunks)
    assert len(result.text.strip()) > 0
    assert result.usage.completion_tokens == 24 or result.finish_reason == "stop"
    assert result.usage.prompt_tokens > 5
    assert "User: Why is the sky blue?" in engine.last_prompt  # no chat template in this GGUF: plain format


async def test_engine_greedy_output_is_deterministic(embedded_model: str) -> None:
    """The kill test below compares answers across processes; that needs greedy decoding to repeat."""
    from gpu_worker.engines.protocol import StopSignal

    engine = LlamaCppEngine(embedded_model, MODEL, n_threads=2)
    await engine.load()
    request = GenerateRequest(prompt=PROMPT, max_tokens=12, temperature=0)
    texts = []
    for _ in range(2):
        texts.append("".join([e.text async for e in engine.generate(request, StopSignal()) if hasattr(e, "text")]))
    await engine.close()
    assert texts[0] == texts[1] and texts[0].strip()


async def test_kill_worker_mid_generation_other_worker_completes(
    nats_server: NatsServer, nc: NATS, processes: Processes, embedded_model: str
) -> None:
    processes.start("broker", "broker", "--nats", nats_server.url, "--worker-timeout", "2")
    workers = {wid: start_llama_worker(processes, nats_server.url, wid) for wid in ("wa", "wb")}
    client = Client(nc)
    await wait_for_models(client, MODEL)
    options = {"model": MODEL, "max_tokens": 48, "temperature": 0.0}
    reference = await client.complete(PROMPT, **options)
    assert reference.attempt == 1 and reference.text.strip()

    generation = client.generate(PROMPT, **options)
    seen_attempts: list[int] = []
    killed: str | None = None
    records = await (await nc.jetstream().key_value(LEASE_BUCKET)).watchall()
    async for chunk in generation:
        seen_attempts.append(chunk.attempt)
        while killed is None:  # the lease record of this request names the worker that runs it
            entry = await records.updates(timeout=10)
            lease = lease_decoder.decode(entry.value) if entry is not None and entry.value else None
            if lease is not None and lease.request_id == generation.request_id:
                killed = lease.worker_id
                workers[killed].kill()  # SIGKILL: no drain, no goodbye
    await records.stop()
    result = generation.result
    assert result is not None and killed is not None
    assert result.worker != killed
    assert result.attempt == 2
    assert result.text == reference.text  # one coherent answer, not two attempts spliced
    assert seen_attempts[0] == 1 and seen_attempts[-1] == 2
    await wait_stream_empty(nc)


async def test_raw_nats_example_gets_chunks_and_result(nats_server: NatsServer, nc: NATS, embedded_model: str) -> None:
    engine = LlamaCppEngine(embedded_model, MODEL, n_threads=2)
    async with broker(nats_server.url), worker(nats_server.url, engine, "w1"):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(REPO / "examples" / "raw_nats_client.py"),
            "Why is the sky blue?",
            "--model",
            MODEL,
            "--nats",
            nats_server.url,
            "--max-tokens",
            "16",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, err.decode()
    assert "[queued at position 0" in err.decode()
    result = json.loads(out.decode().split("RESULT ", 1)[1])
    assert result["usage"]["completion_tokens"] > 0
    assert out.decode().startswith(result["text"])  # the streamed chunks were the answer
