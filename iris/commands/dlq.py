"""`iris dlq ls | replay | rm`: the dead letters in stream IRIS_DLQ."""

from __future__ import annotations

import sys

import click

from iris.commands.options import Listing, listing, nats_option, with_nats


@click.group()
def dlq() -> None:
    """Dead letters (stream IRIS_DLQ): requests lost on max_attempts workers in a row, or unparseable."""


@dlq.command("ls")
@listing("no dead letters")
def dlq_ls() -> Listing:
    """List dead letters: sequence, time, model, workload, code, attempts, request id, reason (never the prompt)."""
    from iris.ops import dead_letters

    return dead_letters.list_dead_letters, dead_letters.as_table


@dlq.command("replay")
@click.argument("seqs", nargs=-1, type=int)
@click.option("--all", "every", is_flag=True, help="Replay every dead letter.")
@click.option("--deadline", "deadline_s", type=float, help="Seconds each may take (default: its original budget).")
@click.option("--wait", is_flag=True, help="Send the answers here, not to the original inbox, and print them.")
@nats_option
def dlq_replay(seqs: tuple[int, ...], every: bool, deadline_s: float | None, wait: bool, nats_url: str) -> None:
    """Publish dead letters SEQ... again to their original subject (new id, fresh deadline); each leaves the
    DLQ once JetStream has stored it. Answers go to the original reply inbox unless --wait."""
    from iris.ops import dead_letters

    if bool(seqs) == every:
        raise click.UsageError("give dead-letter sequences or --all, not both")
    lines, failed = with_nats(nats_url, lambda nc: dead_letters.replay_many(nc, list(seqs), deadline_s, wait))
    click.echo("\n".join(lines) if lines else "no dead letters")
    sys.exit(1 if failed else 0)


@dlq.command("rm")
@click.argument("seqs", nargs=-1, type=int)
@click.option("--all", "every", is_flag=True, help="Remove every dead letter.")
@nats_option
def dlq_rm(seqs: tuple[int, ...], every: bool, nats_url: str) -> None:
    """Erase dead letters SEQ... (or --all) for good."""
    from iris.ops import dead_letters

    if bool(seqs) == every:
        raise click.UsageError("give dead-letter sequences or --all, not both")
    removed = with_nats(nats_url, lambda nc: dead_letters.remove(nc, list(seqs)))
    click.echo(f"removed {removed} dead letter(s)")
