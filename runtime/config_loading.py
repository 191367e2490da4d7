"""Load a service's frozen config Struct from TOML, then `IRIS_<SERVICE>_*` environment, then flags.

Later sources win. Every value is validated by msgspec against the Struct, so a bad key or value fails at
start with a message naming the key, e.g. `invalid config: Expected int >= 1 - at $.slots`.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file, variable or flag that does not fit the service's config type."""


def _file_section(path: Path | None, section: str) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    table = data.get(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [{section}] must be a table")
    return table


def _env_section(env: Mapping[str, str], prefix: str, fields: tuple[str, ...]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in fields:
        raw = env.get(prefix + name.upper())
        if raw is not None:
            values[name] = raw
    return values


def load_config(
    config_type: type[T],
    section: str,
    *,
    path: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> T:
    """Build `config_type` from `[section]` of the TOML file, `IRIS_<SECTION>_<KEY>` variables and flags."""
    fields = tuple(f.name for f in msgspec.structs.fields(config_type))  # type: ignore[arg-type]
    merged = _file_section(path, section)
    merged.update(_env_section(os.environ if env is None else env, f"IRIS_{section.upper()}_", fields))
    merged.update({k: v for k, v in (flags or {}).items() if v is not None})
    try:
        return msgspec.convert(merged, config_type, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid [{section}] config: {exc}") from exc


def load_config_or_exit(
    config_type: type[T], section: str, path: Path | None, flags: Mapping[str, Any], program: str
) -> T:
    """`load_config` for a service's `main`: a bad config ends the process with the key named."""
    try:
        return load_config(config_type, section, path=path, flags=flags)
    except ConfigError as exc:
        raise SystemExit(f"{program}: {exc}") from None
