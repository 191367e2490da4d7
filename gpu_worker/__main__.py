"""`python -m gpu_worker --nats URL [--model PATH] [--slots N] …`: run one worker process; one option per
`WorkerConfig` field."""

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
from gpu_worker.engines.llama.parking import SuspendPolicy
from gpu_worker.engines.protocol import Engine
from gpu_worker.service import WorkerService
from runtime.config_loading import ConfigSource, service_options
from runtime.lifecycle import run_until_signal
from runtime.logs import configure_logging
from schemas.subjects import to_token


def make_engine(config: WorkerConfig) -> Engine:
    """The engine the config names; a contradictory config raises `ValueError` naming the option."""
    if config.engine == "fake":
        name = config.model_name or "fake"
        return FakeEngine(name, config.slots, config.fake_tps, config.fake_crash_on, config.max_suspended)
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
        suspend=SuspendPolicy(config.max_suspended, config.suspend_keep_cells, config.suspend_host_mb << 20),
    )


@click.command()
@service_options(WorkerConfig, "worker", "gpu_worker")
def main(source: ConfigSource[WorkerConfig]) -> None:
    config = source.load_or_exit()
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
