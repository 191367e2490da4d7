"""`iris up`: NATS, the broker, workers and the gateway on this machine. Its options are `UpConfig`'s and
the service fields it offers (`iris.launch.up_config.UP_SETTINGS`), generated from those Structs."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click

from iris.launch.up_config import PARTS, UP_SETTINGS, UpConfig, load_up
from runtime.config_loading import ConfigError, config_options, given


def _up_options(command: Any) -> Any:
    for part, names in reversed(UP_SETTINGS.items()):
        command = config_options(PARTS[part], only=names)(command)
    return config_options(UpConfig)(command)


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="iris.toml: [up], [broker], [worker], [gateway] tables.",
)
@_up_options
def up(config_path: Path | None, **options: Any) -> None:
    """Start NATS, the broker, workers and the gateway on this machine; Ctrl-C stops all."""
    from iris.launch.launcher import Launcher

    try:
        plan = load_up(config_path, given(options))
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    sys.exit(asyncio.run(Launcher(plan).run()))
