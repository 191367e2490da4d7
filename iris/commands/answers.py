"""`iris answers list | show`: the stored final replies in stream IRIS_ANSWERS."""

from __future__ import annotations

import sys

import click

from iris.commands.options import Listing, listing, nats_option, with_nats


@click.group()
def answers() -> None:
    """Stored final replies (stream IRIS_ANSWERS): what a retry with the same key gets, kept for the dedupe window."""


@answers.command("list")
@listing("no stored answers")
def answers_list() -> Listing:
    """List stored answers: sequence, time, owner, request id, kind, how it ended, tokens (never the text)."""
    from iris.ops import answers as ops

    return ops.list_answers, ops.as_table


@answers.command("show")
@click.argument("request_id")
@click.option("--owner", help="The owning NATS user, for requests published under least-privilege accounts.")
@nats_option
def answers_show(request_id: str, owner: str | None, nats_url: str) -> None:
    """Print the stored answer of REQUEST_ID as JSON, as its client got it."""
    from iris.ops import answers as ops

    shown = with_nats(nats_url, lambda nc: ops.show_answer(nc, request_id, owner))
    if shown is None:
        click.echo(f"no stored answer for {request_id!r}", err=True)
        sys.exit(1)
    click.echo(shown)
