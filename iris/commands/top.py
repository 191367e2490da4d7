"""`iris top`: the live terminal view of workloads and workers."""

from __future__ import annotations

import asyncio
import sys

import click

from iris.commands.options import nats_option


@click.command()
@nats_option
@click.option("--refresh", "refresh_s", type=float, default=1.0, show_default=True, help="Seconds between redraws.")
@click.option("--once", is_flag=True, help="Print one snapshot and exit (for scripts).")
def top(nats_url: str, refresh_s: float, once: bool) -> None:
    """Live view: workloads (queued, running, share vs target, waits), workers, recent rejections."""
    from iris.ops.top import run_top

    try:
        asyncio.run(run_top(nats_url, refresh_s, once))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        click.echo(f"iris: cannot reach NATS at {nats_url}: {exc}", err=True)
        sys.exit(1)
