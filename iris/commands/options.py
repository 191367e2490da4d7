"""Options several `iris` commands share."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import click

from runtime.config_fields import DEFAULT_NATS_URL

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

T = TypeVar("T")
R = TypeVar("R")

nats_option = click.option("--nats", "nats_url", default=DEFAULT_NATS_URL, show_default=True, envvar="IRIS_NATS_URL")


def with_nats(nats_url: str, action: Callable[[NATS], Awaitable[T]]) -> T:
    """Run `action` on a fresh connection; exit 1 with a plain message when NATS cannot be reached."""
    import nats

    async def run() -> T:
        nc = await nats.connect(nats_url, max_reconnect_attempts=2, connect_timeout=3)
        try:
            return await action(nc)
        finally:
            await nc.close()

    try:
        return asyncio.run(run())
    except (OSError, nats.errors.NoServersError) as exc:
        click.echo(f"iris: cannot reach NATS at {nats_url}: {exc}", err=True)
        sys.exit(1)


def echo_rows(
    rows: list[R],
    json_out: bool,
    as_json: Callable[[list[R]], str],
    as_table: Callable[[list[R]], str],
    empty: str,
) -> None:
    """A listing command's output: its rows as JSON (`--json`), as a table, or `empty` when there are none."""
    click.echo(as_json(rows) if json_out else as_table(rows) if rows else empty)
