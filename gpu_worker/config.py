"""Worker configuration: one frozen Struct from `[worker]` in TOML, `IRIS_WORKER_*` and flags."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from schemas.reply_subjects import DEFAULT_REPLY_PREFIXES, parse_reply_prefixes
from schemas.subjects import TOKEN_PATTERN

TENSOR_SPLIT_PATTERN = r"^$|^[0-9]+(\.[0-9]+)?(,[0-9]+(\.[0-9]+)?)*$"
Token = Annotated[str, Meta(pattern=TOKEN_PATTERN, max_length=128)]


class WorkerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    nats_url: str = "nats://127.0.0.1:4222"
    engine: Literal["llama", "fake", "http"] = "llama"
    model: str = ""  # GGUF path; empty = the embedded Gemma 3 270M
    model_name: Token | Literal[""] = ""  # the <model> subject token; empty = derived from the file
    worker_id: Token | Literal[""] = ""  # empty = <host>-<pid>
    slots: Annotated[int, Meta(ge=1, le=256)] = 1
    ctx_per_slot: Annotated[int, Meta(ge=128, le=1_048_576)] = 2048
    n_gpu_layers: Annotated[int, Meta(ge=-1)] = 0
    main_gpu: Annotated[int, Meta(ge=0, le=255)] = 0
    tensor_split: Annotated[str, Meta(pattern=TENSOR_SPLIT_PATTERN)] = ""  # proportions per GPU: "3,1"
    flash_attn: Literal["auto", "on", "off"] = "auto"
    kv_unified: bool = True  # one KV buffer shared by all slots (False: one stream per slot)
    threads: Annotated[int, Meta(ge=0, le=1024)] = 0  # 0 = all cores
    fake_tps: Annotated[float, Meta(ge=0)] = 0.0
    fake_crash_on: str = ""  # FakeEngine: a prompt containing this kills the process (poison-prompt tests)
    upstream: str = ""  # --engine http: base URL of an Ollama or OpenAI-compatible server
    upstream_api: Literal["ollama", "openai"] = "ollama"
    upstream_model: str = ""  # the model name the upstream server knows
    upstream_timeout_s: Annotated[float, Meta(gt=0, le=3600)] = 300.0
    heartbeat_s: Annotated[float, Meta(gt=0, le=60)] = 1.0
    drain_timeout_s: Annotated[float, Meta(ge=0, le=3600)] = 30.0
    metrics_host: str = "127.0.0.1"
    metrics_port: Annotated[int, Meta(ge=0, le=65535)] = 0  # Prometheus /metrics; 0 = off
    log_level: str = "info"
    # Where replies to a request without an owner token may go (comma-separated; owned requests reply only
    # under `_INBOX.<owner>.`): a lease for any other reply subject is dead-lettered, never answered.
    reply_prefixes: str = ",".join(DEFAULT_REPLY_PREFIXES)

    @property
    def reply_prefix_list(self) -> tuple[str, ...]:
        return parse_reply_prefixes(self.reply_prefixes)

    def __post_init__(self) -> None:
        parse_reply_prefixes(self.reply_prefixes)
