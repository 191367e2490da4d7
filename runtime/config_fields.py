"""Config fields every service has, declared once (type, bounds, help text); each service's Struct
gives its own default. Plain declarations: the pure broker modules import their config without I/O."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from schemas.reply_subjects import DEFAULT_REPLY_PREFIXES, parse_reply_prefixes

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
NatsUrl = Annotated[str, Meta(description="NATS server URL(s), comma-separated.", extra={"flag": "--nats"})]
LogLevel = Annotated[str, Meta(description="debug, info, warning or error.")]
MetricsHost = Annotated[str, Meta(description="Address of the Prometheus /metrics endpoint.")]
MetricsPort = Annotated[int, Meta(ge=0, le=65535, description="Port of the Prometheus /metrics endpoint (0 = off).")]
# Owned requests reply only under `_INBOX.<owner>.`; a service never publishes to another subject for a client.
ReplyPrefixes = Annotated[
    str, Meta(description="Comma-separated subject prefixes replies to a request without an owner may go to.")
]


class ReplyingService(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The config of a service that replies to clients (broker, worker): where replies may go. Owned
    requests reply only under `_INBOX.<owner>.`; never to the $KV/$JS/iris.* subjects the service may
    publish to (a lease for any other reply subject is dead-lettered, never answered)."""

    reply_prefixes: ReplyPrefixes = ",".join(DEFAULT_REPLY_PREFIXES)

    @property
    def reply_prefix_list(self) -> tuple[str, ...]:
        return parse_reply_prefixes(self.reply_prefixes)

    def __post_init__(self) -> None:
        parse_reply_prefixes(self.reply_prefixes)
