"""Worker configuration: one frozen Struct from `[worker]` in TOML, `IRIS_WORKER_*` and flags."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from schemas.subjects import TOKEN_PATTERN

Token = Annotated[str, Meta(pattern=TOKEN_PATTERN, max_length=128)]


class WorkerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    nats_url: str = "nats://127.0.0.1:4222"
    engine: Literal["llama", "fake"] = "llama"
    model: str = ""  # GGUF path; empty = the embedded Gemma 3 270M
    model_name: Token | Literal[""] = ""  # the <model> subject token; empty = derived from the file
    worker_id: Token | Literal[""] = ""  # empty = <host>-<pid>
    slots: Annotated[int, Meta(ge=1, le=256)] = 1
    ctx_per_slot: Annotated[int, Meta(ge=128, le=1_048_576)] = 2048
    n_gpu_layers: Annotated[int, Meta(ge=-1)] = 0
    threads: Annotated[int, Meta(ge=0, le=1024)] = 0  # 0 = all cores
    fake_tps: Annotated[float, Meta(ge=0)] = 0.0
    heartbeat_s: Annotated[float, Meta(gt=0, le=60)] = 1.0
    drain_timeout_s: Annotated[float, Meta(ge=0, le=3600)] = 30.0
    metrics_host: str = "127.0.0.1"
    metrics_port: Annotated[int, Meta(ge=0, le=65535)] = 0  # Prometheus /metrics; 0 = off
    log_level: str = "info"
