"""Whether a broker leads now, for `/readyz`: the leader key in KV bucket `IRIS_BROKERS` exists only while
a leader renews it (its TTL removes it within `leader_ttl_s` of the last renewal, a clean stop deletes it).
Without a leader requests are stored but nobody schedules them, so a balancer should send no traffic here.
The answer is read at most every `CACHE_S`, so probes cost NATS nothing to speak of."""

from __future__ import annotations

import time

from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from schemas.subjects import BROKER_BUCKET, LEADER_KEY

CACHE_S = 0.5
READ_TIMEOUT_S = 1.0


class BrokerLeader:
    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self._kv: KeyValue | None = None
        self._checked_s = -CACHE_S
        self._leader: str | None = None

    async def leader(self) -> str | None:
        """The leading broker's id, or None when no broker leads (or NATS cannot tell us)."""
        now_s = time.monotonic()
        if now_s - self._checked_s >= CACHE_S:
            self._leader = await self._read()
            self._checked_s = now_s
        return self._leader

    async def _read(self) -> str | None:
        try:
            if self._kv is None:
                self._kv = await self.nc.jetstream(timeout=READ_TIMEOUT_S).key_value(BROKER_BUCKET)
            entry = await self._kv.get(LEADER_KEY)
        except NotFoundError:  # no bucket (no broker ever ran), no key, or a deleted key (KeyDeletedError)
            return None
        except Exception:  # NATS slow or gone: not ready either way
            return None
        return (entry.value or b"").decode(errors="replace") or None
