"""Worker configuration: one frozen Struct from `[worker]` in TOML, `IRIS_WORKER_*` and flags."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from runtime.config_fields import DEFAULT_NATS_URL, LogLevel, MetricsHost, MetricsPort, NatsUrl, ReplyingService
from schemas.subjects import TOKEN_PATTERN

TENSOR_SPLIT_PATTERN = r"^$|^[0-9]+(\.[0-9]+)?(,[0-9]+(\.[0-9]+)?)*$"
TokenOrEmpty = Annotated[str, Meta(pattern=f"^$|{TOKEN_PATTERN}", max_length=128)]  # "" = derived


class WorkerConfig(ReplyingService, frozen=True, forbid_unknown_fields=True):
    nats_url: NatsUrl = DEFAULT_NATS_URL
    engine: Annotated[
        Literal["llama", "fake", "http"], Meta(description="llama: a GGUF file; fake: FakeEngine; http: --upstream.")
    ] = "llama"
    model: Annotated[str, Meta(description="GGUF file (default: the embedded Gemma 3 270M).")] = ""
    model_name: Annotated[TokenOrEmpty, Meta(description="Model name clients use (default: from the file name).")] = ""
    worker_id: Annotated[TokenOrEmpty, Meta(description="Worker name (default: <host>-<pid>-<4 random hex>).")] = ""
    slots: Annotated[
        int, Meta(ge=1, le=256, description="Sequences decoded together in one batch (http: requests at once).")
    ] = 1
    ctx_per_slot: Annotated[
        int, Meta(ge=128, le=1_048_576, description="KV cache cells (tokens) per slot: prompt + max_tokens.")
    ] = 2048
    n_gpu_layers: Annotated[int, Meta(ge=-1, description="Layers offloaded to the GPU; -1 = every layer.")] = 0
    main_gpu: Annotated[
        int, Meta(ge=0, le=255, description="GPU index for the model (and scratch) when not split.")
    ] = 0
    tensor_split: Annotated[
        str, Meta(pattern=TENSOR_SPLIT_PATTERN, description="Share of the model per GPU, e.g. 3,1.")
    ] = ""
    flash_attn: Annotated[Literal["auto", "on", "off"], Meta(description="Flash attention.")] = "auto"
    kv_unified: Annotated[
        bool,
        Meta(description="One KV buffer for all slots, or one per slot.", extra={"flag": "--kv-unified/--kv-per-slot"}),
    ] = True
    max_suspended: Annotated[
        int,
        Meta(ge=0, le=64, description="Leases held suspended at once (preempted for a higher priority); 0 = none."),
    ] = 2
    suspend_keep_cells: Annotated[
        bool,
        Meta(
            description="Leave a suspended lease's KV cells in the cache while there is room (free resume).",
            extra={"flag": "--suspend-keep-cells/--suspend-evict-cells"},
        ),
    ] = True
    suspend_host_mb: Annotated[
        int,
        Meta(ge=0, le=1_048_576, description="Host memory (MiB) for evicted suspended states; past it, re-prefill."),
    ] = 1024
    threads: Annotated[int, Meta(ge=0, le=1024, description="llama.cpp threads (0 = all cores).")] = 0
    fake_tps: Annotated[float, Meta(ge=0, description="FakeEngine tokens/s per sequence (0 = no delay).")] = 0.0
    fake_crash_on: Annotated[
        str, Meta(description="FakeEngine: a prompt containing this text kills the process (poison-prompt tests).")
    ] = ""
    upstream: Annotated[str, Meta(description="--engine http: base URL of an Ollama or OpenAI-compatible server.")] = ""
    upstream_api: Annotated[Literal["ollama", "openai"], Meta(description="--engine http: the upstream's API.")] = (
        "ollama"
    )
    upstream_model: Annotated[str, Meta(description="--engine http: the model name the upstream serves.")] = ""
    upstream_timeout_s: Annotated[
        float, Meta(gt=0, le=3600, description="--engine http: seconds one upstream call may take.")
    ] = 300.0
    heartbeat_s: Annotated[float, Meta(gt=0, le=60, description="Seconds between heartbeats.")] = 1.0
    drain_timeout_s: Annotated[
        float, Meta(ge=0, le=3600, description="Seconds running answers get on SIGTERM before they are cut off.")
    ] = 30.0
    metrics_host: MetricsHost = "127.0.0.1"
    metrics_port: MetricsPort = 0
    log_level: LogLevel = "info"
