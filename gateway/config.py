"""Gateway configuration: one frozen Struct from `[gateway]` in TOML, `IRIS_GATEWAY_*` and flags.

API keys are stored hashed (`sha256` of the key, hex): the config file never holds a usable secret.
`iris up --api-key KEY[:workload[:max_priority]]` adds keys for local use; they are hashed at start.
"""

from __future__ import annotations

import hashlib
from typing import Annotated

import msgspec
from msgspec import Meta

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
    nats_url: str = "nats://127.0.0.1:4222"
    max_in_flight: Annotated[int, Meta(ge=1, le=100_000)] = 1024
    log_level: str = "info"
    http_host: str = "127.0.0.1"
    http_port: Annotated[int, Meta(ge=0, le=65535)] = 8080  # 0 = no HTTP server
    require_key: bool = False  # on loopback, keyless requests are served as workload `default`, priority 1
    api_keys: list[ApiKey] = []
    max_body_bytes: Annotated[int, Meta(ge=1024, le=64 * 1024**2)] = 4 * 1024**2
    max_deadline_s: Annotated[float, Meta(gt=0, le=3600)] = 3600.0
    default_deadline_s: Annotated[float, Meta(gt=0, le=3600)] = 120.0
    # Ollama/OpenAI chat with no limit set: 0 = until a stop or the slot's context is full (as Ollama does).
    default_max_tokens: Annotated[int, Meta(ge=0, le=32_768)] = 0
    # A streamed request still queued this long after admission commits to 200 and streams its position.
    queue_commit_after_s: Annotated[float, Meta(ge=0, le=60)] = 1.0
    # Longest silence on a streamed answer before a keep-alive (proxies and clients time out idle streams).
    stream_keepalive_s: Annotated[float, Meta(gt=0, le=10)] = 5.0
    keyless_requests_per_min: Annotated[int, Meta(ge=0)] = 0  # all keyless callers together; 0 = unlimited
    keyless_tokens_per_min: Annotated[int, Meta(ge=0)] = 0
    # Host names served besides loopback names and addresses ("*" = any); checked always when listed, and
    # on a loopback gateway even when not (DNS rebinding). Browser origins allowed to call, with CORS.
    allowed_hosts: list[Annotated[str, Meta(min_length=1, max_length=253)]] = []
    allowed_origins: list[Annotated[str, Meta(min_length=1, max_length=512)]] = []  # e.g. "http://localhost:3000"

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
