"""Options several `iris` commands share: the NATS URL and its connection, listings, the benches' options."""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from runtime.config_fields import DEFAULT_NATS_URL

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

T = TypeVar("T")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])

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


Listing = tuple[Callable[["NATS", int], Awaitable[list[Any]]], Callable[[list[Any]], str]]  # rows, their table


def listing(empty: str) -> Callable[[Callable[[], Listing]], Callable[..., None]]:
    """A listing command (`--nats`, `--limit`, `--json`): the decorated function names the reader of the rows
    and their table (imported when the command runs); prints them as JSON, as the table, or `empty`."""

    def decorate(rows_and_table: Callable[[], Listing]) -> Callable[..., None]:
        @nats_option
        @click.option("--limit", type=int, default=50, show_default=True, help="Show the newest N (0 = all).")
        @click.option("--json", "json_out", is_flag=True, help="A JSON array instead of a table.")
        @functools.wraps(rows_and_table)
        def command(nats_url: str, limit: int, json_out: bool) -> None:
            from iris.ops.listing import as_json

            read, as_table = rows_and_table()
            rows = with_nats(nats_url, lambda nc: read(nc, limit))
            click.echo(as_json(rows) if json_out else as_table(rows) if rows else empty)

        return command

    return decorate


def out_option(name: str) -> Callable[[F], F]:
    """`--out`: where a bench saves its JSON, `bench-results/<name>.json` unless told."""
    return click.option(
        "--out", type=click.Path(path_type=Path), default=Path(f"bench-results/{name}.json"), show_default=True
    )


def choice_option(flag: str, choices: list[str], default: str, help: str) -> Callable[[F], F]:
    """A flag taking one of `choices`, its default shown in `--help`."""
    return click.option(flag, type=click.Choice(choices), default=default, show_default=True, help=help)


def llama_options(concurrency: str, concurrency_help: str, rounds: int) -> Callable[[F], F]:
    """What the benches of Iris against llama.cpp itself share: the model, the concurrency levels (a list of
    positive integers), tokens per answer, rounds, llama.cpp threads and GPU layers (the same in both arms)."""
    options = [
        click.option("--model", help="GGUF file (default: the embedded Gemma 3 270M)."),
        ints_option("--concurrency", concurrency, concurrency_help),
        click.option("--max-tokens", type=int, default=128, show_default=True),
        click.option(
            "--rounds", type=int, default=rounds, show_default=True, help="Rounds per arm; figures are medians."
        ),
        click.option("--threads", type=int, default=1, show_default=True, help="llama.cpp threads, both arms."),
        click.option("--n-gpu-layers", type=int, default=0, show_default=True, help="-1 offloads every layer."),
    ]

    def decorate(command: F) -> F:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def ints_option(name: str, default: str, help: str) -> Callable[[F], F]:
    """A comma-separated list of positive integers (the command gets a `list[int]`)."""
    return click.option(name, default=default, show_default=True, callback=positive_ints, help=help)


def positive_ints(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    """A comma-separated option's values: one or more positive integers, else a usage error naming it."""
    try:
        levels = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        raise click.BadParameter(f"{value!r}: expected positive integers such as {param.default}")
    return levels


def gguf_path(model: str | None) -> str:
    """`--model`'s file, or the embedded model (assembled into the cache on first use)."""
    from gpu_worker.embedded_model import embedded_model_path

    return str(Path(model).expanduser()) if model else str(embedded_model_path())
