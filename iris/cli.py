"""The `iris` command: `iris up`, `iris submit`, `iris top`, `iris dlq …`, `iris answers …`, `iris bench …`
(one module per group in `iris.commands`)."""

from __future__ import annotations

import click

from iris.commands.answers import answers
from iris.commands.bench import bench
from iris.commands.dlq import dlq
from iris.commands.submit import submit
from iris.commands.top import top
from iris.commands.up import up


@click.group()
def main() -> None:
    """Iris: a priority- and fairness-aware broker for self-hosted LLMs on NATS JetStream."""


for command in (up, submit, top, dlq, answers, bench):
    main.add_command(command)


if __name__ == "__main__":
    main()
