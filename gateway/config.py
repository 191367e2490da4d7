"""Gateway configuration: one frozen Struct from `[gateway]` in TOML, `IRIS_GATEWAY_*` and flags."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta


class GatewayConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    nats_url: str = "nats://127.0.0.1:4222"
    max_in_flight: Annotated[int, Meta(ge=1, le=100_000)] = 1024
    log_level: str = "info"
