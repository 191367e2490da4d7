"""The broker's view of KV bucket `IRIS_LEASES` at the start of a term: every live lease, written by this
or an earlier leader. During a term the leader hears lease ends from the workers (`LeasesDone`), so it
does not follow the bucket.
"""

from __future__ import annotations

from typing import Any

from nats.js.kv import KeyValue

from schemas.messages import Lease, lease_decoder


class LeaseRecords:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def read_all(self) -> list[Lease]:
        """Every live lease now."""
        watcher: Any = await self.kv.watchall()  # nats-py leaves its methods untyped
        leases: list[Lease] = []
        try:
            while True:
                entry = await watcher.updates(timeout=5.0)
                if entry is None:
                    return leases
                if entry.value:
                    leases.append(lease_decoder.decode(entry.value))
        finally:
            await watcher.stop()
