"""Options several `iris` commands share."""

from __future__ import annotations

import click

DEFAULT_NATS = "nats://127.0.0.1:4222"

nats_option = click.option("--nats", "nats_url", default=DEFAULT_NATS, show_default=True, envvar="IRIS_NATS_URL")
