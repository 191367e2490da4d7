"""Config fields every service has, declared once (type, bounds, help text); each service's Struct
gives its own default. Plain declarations: the pure broker modules import their config without I/O."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
NatsUrl = Annotated[str, Meta(description="NATS server URL(s), comma-separated.", extra={"flag": "--nats"})]
LogLevel = Annotated[str, Meta(description="debug, info, warning or error.")]
MetricsHost = Annotated[str, Meta(description="Address of the Prometheus /metrics endpoint.")]
MetricsPort = Annotated[int, Meta(ge=0, le=65535, description="Port of the Prometheus /metrics endpoint (0 = off).")]
# Owned requests reply only under `_INBOX.<owner>.`; a service never publishes to another subject for a client.
ReplyPrefixes = Annotated[
    str, Meta(description="Comma-separated subject prefixes replies to a request without an owner may go to.")
]
