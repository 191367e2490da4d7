"""Options several `iris` commands share."""

from __future__ import annotations

import click

from runtime.config_fields import DEFAULT_NATS_URL

nats_option = click.option("--nats", "nats_url", default=DEFAULT_NATS_URL, show_default=True, envvar="IRIS_NATS_URL")
