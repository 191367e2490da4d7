"""Load a service's frozen config Struct from TOML, then `IRIS_<SERVICE>_*` environment, then a JSON
handoff, then flags; and make its command-line options from the same Struct.

Later sources win. Every value is validated by msgspec against the Struct, so a bad key or value fails at
start with a message naming the key, e.g. `invalid [worker] config: Expected int >= 1 - at $.slots`.
Each field is declared once, in its Struct: its option (`--max-concurrency`; a `_s` field drops the unit,
`--worker-timeout`; `Meta(extra={"flag": ...})` names it otherwise), type, bounds, default and help text
(`Meta(description=...)`) all come from there. A table or list (not of plain values) is given as JSON, by
flag or variable alike. The handoff (`--config-json`) is how `iris up` hands each child the part of its
section it decides (ids, ports, the `iris up` flags): above the table and the variables, below flags.
"""

from __future__ import annotations

import functools
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import click
import msgspec
from msgspec import inspect

T = TypeVar("T")
HANDOFF_FLAG = "--config-json"


class ConfigError(ValueError):
    """A config file, variable or flag that does not fit the service's config type."""


@dataclass(frozen=True)
class Setting:
    """One config field as the command line and the environment see it."""

    name: str
    flag: str  # click's declaration: "--slots", "--kv-unified/--kv-per-slot"
    help: str
    kind: inspect.Type  # with its `Meta` bounds
    default: object

    @property
    def as_json(self) -> bool:
        """A table, or a list of tables: given as JSON."""
        return _container(self.kind) and not self.repeatable

    @property
    def repeatable(self) -> bool:
        """A list of plain values: the flag is given once per value."""
        listed = _plain(self.kind)
        return isinstance(listed, inspect.ListType) and not _container(listed.item_type)


def _plain(kind: inspect.Type) -> inspect.Type:
    """The value type under `Meta` wrappers and `| None` / `| Literal[""]` alternatives."""
    while isinstance(kind, inspect.Metadata):
        kind = kind.type
    if isinstance(kind, inspect.UnionType):
        members = [_plain(t) for t in kind.types if not isinstance(t, inspect.NoneType)]
        typed = [t for t in members if not isinstance(t, inspect.LiteralType)]
        return typed[0] if typed else members[0]
    return kind


def _container(kind: inspect.Type) -> bool:
    return isinstance(_plain(kind), inspect.DictType | inspect.ListType | inspect.StructType)


def _metadata(kind: inspect.Type) -> tuple[str, dict[str, Any]]:
    """The field's description and `extra`, from a `Meta` on the field or on one alternative of it."""
    inner = kind.type if isinstance(kind, inspect.Metadata) else kind
    candidates = [kind, *(inner.types if isinstance(inner, inspect.UnionType) else ())]
    description, extra = "", dict[str, Any]()
    for each in candidates:
        if isinstance(each, inspect.Metadata):
            description = description or str((each.extra_json_schema or {}).get("description", ""))
            extra = {**(each.extra or {}), **extra}
    return description, extra


_SETTINGS: dict[type, tuple[Setting, ...]] = {}


def settings(config_type: type) -> tuple[Setting, ...]:
    """Every field of `config_type`, in declaration order."""
    if config_type not in _SETTINGS:
        _SETTINGS[config_type] = _settings(config_type)
    return _SETTINGS[config_type]


def _settings(config_type: type) -> tuple[Setting, ...]:
    info = inspect.type_info(config_type)
    assert isinstance(info, inspect.StructType), config_type
    found = []
    for field in info.fields:
        description, extra = _metadata(field.type)
        plain = _plain(field.type)
        name = field.name.removesuffix("_s").replace("_", "-")
        flag = f"--{name}/--no-{name}" if isinstance(plain, inspect.BoolType) else f"--{name}"
        default = field.default_factory() if field.default is msgspec.NODEFAULT else field.default
        found.append(Setting(field.name, str(extra.get("flag", flag)), description, field.type, default))
    return tuple(found)


def _click_type(setting: Setting) -> click.ParamType[Any]:
    kind = setting.kind
    if setting.repeatable:
        listed = _plain(kind)
        assert isinstance(listed, inspect.ListType)
        kind = listed.item_type
    choices = _choices(kind)
    if choices:
        return click.Choice(choices)
    plain = _plain(kind)
    if isinstance(plain, inspect.IntType):
        low, high = _bounds(plain)
        return click.IntRange(low, high, min_open=plain.gt is not None, max_open=plain.lt is not None)
    if isinstance(plain, inspect.FloatType):
        low, high = _bounds(plain)
        return click.FloatRange(low, high, min_open=plain.gt is not None, max_open=plain.lt is not None)
    return click.STRING


def _choices(kind: inspect.Type) -> list[str]:
    """A field that is only literals (`Literal["wfq", "fifo"]`, `Literal[...] | None`) is a choice."""
    while isinstance(kind, inspect.Metadata):
        kind = kind.type
    members = (
        [t for t in kind.types if not isinstance(t, inspect.NoneType)]
        if isinstance(kind, inspect.UnionType)
        else [kind]
    )
    if not all(isinstance(t, inspect.LiteralType) for t in members):
        return []
    return [str(v) for t in members if isinstance(t, inspect.LiteralType) for v in t.values]


def _bounds(kind: inspect.IntType | inspect.FloatType) -> tuple[Any, Any]:
    """The bounds as help shows them: whole ones as integers (`0<=x<=1`), however they were written. Python
    caches `Annotated[float, Meta(ge=0, le=1)]` as an equal alias declared earlier, `Meta(ge=0.0, le=1.0)`."""
    low = kind.ge if kind.ge is not None else kind.gt
    high = kind.le if kind.le is not None else kind.lt
    return _whole(low), _whole(high)


def _whole(bound: float | None) -> float | None:
    return int(bound) if isinstance(bound, float) and bound.is_integer() else bound


def _decode_json(setting: Setting, raw: str, where: str) -> Any:
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{where}: {setting.name} must be JSON: {exc}") from None


def click_option(setting: Setting) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The `click.option` for one field, showing the Struct's default (`given` drops it if not typed)."""
    shown = setting.default != ""  # an empty default is described in the help ("default: from the file name")
    common: dict[str, Any] = {"help": setting.help, "default": setting.default, "show_default": shown}
    if setting.flag.count("/"):
        return click.option(setting.flag, setting.name, **common)
    if setting.repeatable:
        return click.option(setting.flag, setting.name, type=_click_type(setting), multiple=True, **common)

    def from_json(_ctx: click.Context, _param: click.Parameter, value: object) -> Any:
        if not isinstance(value, str):
            return value  # the default
        try:
            return _decode_json(setting, value, setting.flag)
        except ConfigError as exc:
            raise click.BadParameter(str(exc)) from None

    if setting.as_json:
        common["default"] = msgspec.json.encode(setting.default).decode()
        return click.option(setting.flag, setting.name, metavar="JSON", callback=from_json, **common)
    return click.option(setting.flag, setting.name, type=_click_type(setting), **common)


def given(values: Mapping[str, Any]) -> dict[str, Any]:
    """The options of the running click command that were typed (or came from their envvar), not defaults."""
    ctx = click.get_current_context()
    unset = (None, click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP)
    return {name: value for name, value in values.items() if ctx.get_parameter_source(name) not in unset}


def config_options(config_type: type, only: Iterable[str] | None = None) -> Callable[[T], T]:
    """Decorator: one option per field of `config_type` (or the fields named in `only`)."""
    chosen = [s for s in settings(config_type) if only is None or s.name in set(only)]

    def decorate(command: T) -> T:
        for setting in reversed(chosen):
            command = click_option(setting)(command)  # type: ignore[arg-type, assignment]
        return command

    return decorate


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


def _env_section(env: Mapping[str, str], prefix: str, fields: Iterable[Setting]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for setting in fields:
        raw = env.get(prefix + setting.name.upper())
        if raw is not None:
            json = setting.as_json or setting.repeatable
            values[setting.name] = _decode_json(setting, raw, prefix + setting.name.upper()) if json else raw
    return values


def decode_handoff(raw: str | None) -> dict[str, Any]:
    """The `--config-json` object; anything but a JSON object is refused naming the flag."""
    if not raw:
        return {}
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{HANDOFF_FLAG}: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{HANDOFF_FLAG} must be a JSON object")
    return value


def layered(
    section: str,
    fields: Iterable[Setting],
    *,
    path: Path | None = None,
    handoff: Mapping[str, Any] | None = None,
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """`[section]` of the TOML file < `IRIS_<SECTION>_<KEY>` < handoff < flags, not yet validated."""
    merged = _file_section(path, section)
    merged.update(_env_section(os.environ if env is None else env, f"IRIS_{section.upper()}_", fields))
    merged.update(handoff or {})
    merged.update({k: v for k, v in (flags or {}).items() if v is not None and v != ()})
    return merged


def convert(values: Mapping[str, Any], config_type: type[T], section: str) -> T:
    try:
        return msgspec.convert(dict(values), config_type, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid [{section}] config: {exc}") from exc


def load_config(
    config_type: type[T],
    section: str,
    *,
    path: Path | None = None,
    handoff: Mapping[str, Any] | None = None,
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> T:
    """Build `config_type` from `[section]` of the TOML file, `IRIS_<SECTION>_<KEY>`, handoff and flags."""
    values = layered(section, settings(config_type), path=path, handoff=handoff, flags=flags, env=env)
    return convert(values, config_type, section)


@dataclass(frozen=True)
class ConfigSource(Generic[T]):
    """Where a service's config comes from: what its `main` loads at start and again on SIGHUP."""

    config_type: type[T]
    section: str
    program: str
    path: Path | None
    handoff: str | None
    flags: Mapping[str, Any]

    def load(self) -> T:
        handoff = decode_handoff(self.handoff)
        return load_config(self.config_type, self.section, path=self.path, handoff=handoff, flags=self.flags)

    def load_or_exit(self) -> T:
        """A bad config ends the process with the key named."""
        try:
            return self.load()
        except ConfigError as exc:
            raise SystemExit(f"{self.program}: {exc}") from None


config_file_option = click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TOML file; this service reads its own table.",
)


def service_options(
    config_type: type[T], section: str, program: str
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Decorator for a service's `main(source: ConfigSource, **other_options)`: `--config`, `--config-json`
    and one option per field of `config_type`."""
    names = {s.name for s in settings(config_type)}

    def decorate(main: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(main)
        def run(config_path: Path | None, config_json: str | None, **options: Any) -> None:
            flags = given({name: options.pop(name) for name in names})
            main(ConfigSource(config_type, section, program, config_path, config_json, flags), **options)

        run = config_options(config_type)(run)
        handoff_help = "Settings as a JSON object, above the file and IRIS_* variables, below flags (iris up)."
        run = click.option(HANDOFF_FLAG, "config_json", metavar="JSON", help=handoff_help)(run)
        return config_file_option(run)

    return decorate
