"""Gateway configuration: one frozen Struct from `[gateway]` in TOML, `IRIS_GATEWAY_*` and flags.

API keys are stored hashed (`sha256` of the key, hex): the config file never holds a usable secret.
`iris up --api-key KEY[:workload[:max_priority]]` adds keys for local use; they are hashed at start.
"""

from __future__ import annotations

import hashlib
from typing import Annotated

import msgspec
from msgspec import Meta

from runtime.config_fields import DEFAULT_NATS_URL, LogLevel, NatsUrl
from schemas.subjects import TOKEN_PATTERN

Token = Annotated[str, Meta(pattern=TOKEN_PATTERN, max_length=128)]
Priority = Annotated[int, Meta(ge=1, le=100)]
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


class ApiKey(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One key: who it is (`user`, the fairness key), where its requests go, and how high they may rank."""

    sha256: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
    user: Token
    workload: Token = "default"
    workloads: list[Token] = []  # further workloads this key may choose with X-Iris-Workload
    default_priority: Priority = 1
    max_priority: Priority = 1
    requests_per_min: Annotated[int, Meta(ge=0)] = 0  # 0 = unlimited
    tokens_per_min: Annotated[int, Meta(ge=0)] = 0  # prompt + completion tokens; 0 = unlimited

    def allows_workload(self, workload: str) -> bool:
        return workload == self.workload or workload in self.workloads


class GatewayConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    nats_url: NatsUrl = DEFAULT_NATS_URL
    max_in_flight: Annotated[
        int, Meta(ge=1, le=100_000, description="Requests this gateway carries at once (more wait).")
    ] = 1024
    log_level: LogLevel = "info"
    http_host: Annotated[str, Meta(description="Address the HTTP API binds (loopback serves keyless requests).")] = (
        "127.0.0.1"
    )
    http_port: Annotated[int, Meta(ge=0, le=65535, description="HTTP port; 0 = no HTTP API.")] = 8080
    # On loopback, keyless requests are served as workload `default`, priority 1.
    require_key: Annotated[bool, Meta(description="Require an API key even on loopback.")] = False
    api_keys: Annotated[
        list[ApiKey], Meta(description='Hashed API keys: [{"sha256": ..., "user": ..., "workload": ...}].')
    ] = []
    max_body_bytes: Annotated[int, Meta(ge=1024, le=64 * 1024**2, description="Largest request body (then 413).")] = (
        4 * 1024**2
    )
    max_deadline_s: Annotated[float, Meta(gt=0, le=3600, description="Longest deadline a caller may ask, seconds.")] = (
        3600.0
    )
    default_deadline_s: Annotated[
        float, Meta(gt=0, le=3600, description="Deadline of a request that names none, seconds.")
    ] = 120.0
    # As Ollama does: 0 = until a stop or the slot's context is full.
    default_max_tokens: Annotated[
        int,
        Meta(
            ge=0,
            le=32_768,
            description="Ollama/OpenAI chat with no limit set (0 = until a stop or the context is full).",
        ),
    ] = 0
    queue_commit_after_s: Annotated[
        float, Meta(ge=0, le=60, description="Seconds a streamed request may wait queued before it commits to 200.")
    ] = 1.0
    # Proxies and clients time out idle streams.
    stream_keepalive_s: Annotated[
        float, Meta(gt=0, le=10, description="Longest silence on a streamed answer before a keep-alive, seconds.")
    ] = 5.0
    keyless_requests_per_min: Annotated[
        int, Meta(ge=0, description="Requests per minute of all keyless callers together (0 = unlimited).")
    ] = 0
    keyless_tokens_per_min: Annotated[
        int, Meta(ge=0, description="Tokens per minute of all keyless callers together (0 = unlimited).")
    ] = 0
    # Checked always when listed, and on a loopback gateway even when not (DNS rebinding).
    allowed_hosts: Annotated[
        list[Annotated[str, Meta(min_length=1, max_length=253)]],
        Meta(description='Host names served besides loopback ones ("*" = any; repeatable).'),
    ] = []
    allowed_origins: Annotated[
        list[Annotated[str, Meta(min_length=1, max_length=512)]],
        Meta(description="Browser origins allowed to call, with CORS, e.g. http://localhost:3000 (repeatable)."),
    ] = []

    @property
    def keys_required(self) -> bool:
        return self.require_key or self.http_host not in LOOPBACK_HOSTS


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_key_spec(spec: str) -> ApiKey:
    """`KEY[:workload[:max_priority]]` → an `ApiKey` (hashed); raises `ValueError` naming the bad part."""
    key, _, rest = spec.partition(":")
    workload, _, max_priority = rest.partition(":")
    if len(key) < 8:
        raise ValueError("an API key must have at least 8 characters")
    digest = hash_key(key)
    fields = {"sha256": digest, "user": f"key-{digest[:10]}", "workload": workload or "default"}
    if max_priority:
        fields["max_priority"] = max_priority
    try:
        return msgspec.convert(fields, ApiKey, strict=False)
    except msgspec.ValidationError as exc:
        raise ValueError(f"bad --api-key {key[:3]}…:{rest}: {exc}") from None
