"""`python -m gpu_worker --nats URL [--model PATH] [--slots N] …`: run one worker process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from gpu_worker.config import WorkerConfig
from gpu_worker.embedded_model import EMBEDDED_MODEL_NAME, embedded_model_path
from gpu_worker.engines.fake import FakeEngine
from gpu_worker.engines.http import HttpEngine, UpstreamError
from gpu_worker.engines.llama.engine import LlamaCppEngine
from gpu_worker.engines.llama.offload import Offload, OffloadError, parse_tensor_split
from gpu_worker.engines.protocol import Engine
from gpu_worker.service import WorkerService
from runtime.config_loading import load_config_or_exit
from runtime.lifecycle import run_until_signal
from runtime.logs import configure_logging
from schemas.subjects import to_token


def make_engine(config: WorkerConfig) -> Engine:
    """The engine the config names; a contradictory config raises `ValueError` naming the option."""
    if config.engine == "fake":
        return FakeEngine(config.model_name or "fake", config.slots, config.fake_tps, config.fake_crash_on)
    if config.engine == "http":
        name = config.model_name or to_token(config.upstream_model.removesuffix(":latest").lower())
        return HttpEngine(
            config.upstream,
            config.upstream_api,
            config.upstream_model,
            name,
            slots=config.slots,
            timeout_s=config.upstream_timeout_s,
        )
    if config.model:
        path = Path(config.model).expanduser()
        name = config.model_name or to_token(path.stem.lower())
    else:
        path, name = embedded_model_path(), config.model_name or EMBEDDED_MODEL_NAME
    return LlamaCppEngine(
        str(path),
        name,
        slots=config.slots,
        ctx_per_slot=config.ctx_per_slot,
        n_threads=config.threads or None,
        offload=Offload(
            n_gpu_layers=config.n_gpu_layers,
            main_gpu=config.main_gpu,
            tensor_split=parse_tensor_split(config.tensor_split),
            flash_attn=config.flash_attn,
        ),
        kv_unified=config.kv_unified,
    )


@click.command()
@click.option("--nats", "nats_url", help="NATS server URL.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--engine", type=click.Choice(["llama", "fake", "http"]), help="http: forward to --upstream.")
@click.option("--model", help="GGUF file (default: the embedded Gemma 3 270M).")
@click.option("--model-name", help="Model name clients use (default: from the file name).")
@click.option("--worker-id")
@click.option("--slots", type=int, help="Sequences decoded together in one batch (http: requests at once).")
@click.option("--ctx-per-slot", type=int, help="KV cache cells (tokens) per slot: prompt + max_tokens.")
@click.option("--n-gpu-layers", type=int, help="-1 = offload every layer to the GPU.")
@click.option("--main-gpu", type=int, help="GPU index for the model (and scratch) when not split.")
@click.option("--tensor-split", help="Share of the model per GPU, e.g. 3,1.")
@click.option("--flash-attn", type=click.Choice(["auto", "on", "off"]))
@click.option("--kv-unified/--kv-per-slot", default=None, help="One KV buffer for all slots, or one per slot.")
@click.option("--threads", type=int)
@click.option("--fake-tps", type=float, help="FakeEngine tokens/s per sequence (0 = no delay).")
@click.option("--fake-crash-on", help="FakeEngine: a prompt containing this text kills the process (tests).")
@click.option("--upstream", help="--engine http: base URL of an Ollama or OpenAI-compatible server.")
@click.option("--upstream-api", type=click.Choice(["ollama", "openai"]))
@click.option("--upstream-model", help="--engine http: the model name the upstream serves.")
@click.option("--heartbeat", "heartbeat_s", type=float)
@click.option("--metrics-host", help="Address of the Prometheus /metrics endpoint (default 127.0.0.1).")
@click.option("--metrics-port", type=int, help="Port of the Prometheus /metrics endpoint (0 = off).")
@click.option("--log-level")
def main(config_path: Path | None, **flags: object) -> None:
    config = load_config_or_exit(WorkerConfig, "worker", config_path, flags, "gpu_worker")
    log = configure_logging("gpu_worker", config.log_level)
    try:
        service = WorkerService(config, make_engine(config), log)
    except ValueError as exc:
        raise SystemExit(f"gpu_worker: {exc}") from None
    try:
        asyncio.run(run_until_signal(service.start, service.stop))
    except (OffloadError, UpstreamError) as exc:  # options this build, machine or upstream cannot honour
        raise SystemExit(f"gpu_worker: {exc}") from None


if __name__ == "__main__":
    main()
