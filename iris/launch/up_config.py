"""`iris up`'s one config: the `[up]` table for what only `iris up` has (workers, ports, state dir), and
the `[broker]`, `[worker]` and `[gateway]` tables its children read.

`iris up` offers a few service fields as its own flags and `[up]` keys (`UP_SETTINGS`: `--slots`,
`--max-concurrency`, `--http-port` ...); their type, bounds, default and help are the service Struct's.
Given (by `[up]`, `IRIS_UP_*` or flag), such a value beats the service's own table and variables, and
is handed to the child (`--config-json`) with what `iris up` decides per child (NATS URL, worker id,
metrics port). Every section is validated before anything starts, so a bad key stops `iris up` naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from broker.config import BrokerConfig
from gateway.config import GatewayConfig, parse_key_spec
from gpu_worker.config import WorkerConfig
from runtime.config_loading import ConfigError, convert, layered, load_config, settings

PARTS: dict[str, type] = {"broker": BrokerConfig, "worker": WorkerConfig, "gateway": GatewayConfig}
UP_SETTINGS: dict[str, tuple[str, ...]] = {  # service fields that are `iris up` flags and `[up]` keys too
    "broker": ("policy", "max_concurrency"),
    "worker": ("engine", "model", "model_name", "slots", "n_gpu_layers", "fake_tps"),
    "gateway": ("http_host", "http_port", "require_key"),
}


class UpConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    workers: Annotated[int, Meta(ge=1, le=64, description="Worker processes.")] = 1
    nats_port: Annotated[int, Meta(ge=0, le=65535, description="NATS client port.")] = 4222
    cluster: Annotated[
        int, Meta(ge=1, le=5, description="Run a local JetStream cluster of N nodes (3 or 5) with replicated streams.")
    ] = 1
    metrics_port: Annotated[
        int, Meta(ge=0, le=65535, description="Broker /metrics port; workers use the next ones (0 = off).")
    ] = 9101
    api_key: Annotated[  # handed to the gateway by environment, never on a command line
        list[str], Meta(description="KEY[:workload[:max_priority]] for local use (repeatable).")
    ] = []
    state_dir: Annotated[str, Meta(description="Where NATS data and logs live (default ~/.local/state/iris).")] = ""
    ready_timeout_s: Annotated[
        float, Meta(gt=0, description="Seconds to wait for every worker's first heartbeat before giving up.")
    ] = 300.0


@dataclass(frozen=True)
class UpPlan:
    """The whole config of one `iris up`, validated."""

    up: UpConfig
    broker: BrokerConfig
    worker: WorkerConfig
    gateway: GatewayConfig
    handoff: dict[str, dict[str, Any]]  # part → the `UP_SETTINGS` values given to `iris up`
    config_file: Path | None


def _up_settings() -> list[Any]:
    return [s for part, names in UP_SETTINGS.items() for s in settings(PARTS[part]) if s.name in names]


def _handoff(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Take the service fields out of `values`, validated as `[up]` values (the user wrote them there)."""
    handoff: dict[str, dict[str, Any]] = {}
    for part, names in UP_SETTINGS.items():
        given = {name: values.pop(name) for name in names if name in values}
        typed = convert(given, PARTS[part], "up")
        handoff[part] = {name: getattr(typed, name) for name in given}
    return handoff


def load_up(path: Path | None, flags: Mapping[str, Any], env: Mapping[str, str] | None = None) -> UpPlan:
    """`[up]` < `IRIS_UP_*` < flags for `iris up`, and each service's section under what it was given."""
    values = layered("up", [*settings(UpConfig), *_up_settings()], path=path, flags=flags, env=env)
    handoff = _handoff(values)
    up = convert(values, UpConfig, "up")
    for spec in up.api_key:
        try:
            parse_key_spec(spec)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    sections = {part: load_config(PARTS[part], part, path=path, handoff=handoff[part], env=env) for part in PARTS}
    return UpPlan(up, sections["broker"], sections["worker"], sections["gateway"], handoff, path)
