"""The broker's view of KV bucket `IRIS_LEASES`: every live lease at the start of a term, then each lease
that appears (written by this or an earlier leader) or ends (its worker deleted it after the final reply).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nats.js.kv import KeyValue

from schemas.messages import Lease, lease_decoder


class LeaseRecords:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self._watcher: Any = None

    async def read_all(self) -> list[Lease]:
        """Every live lease now; `follow` then goes on from exactly there."""
        self._watcher = await self.kv.watchall()
        leases: list[Lease] = []
        while True:
            entry = await self._watcher.updates(timeout=5.0)
            if entry is None:
                return leases
            if entry.value:
                leases.append(lease_decoder.decode(entry.value))

    async def follow(self, recorded: Callable[[Lease], None], ended: Callable[[int], None]) -> None:
        # `async for`, not `updates(timeout=…)`: Python 3.11's wait_for can swallow a cancel when its
        # queue is never empty, which under load left stop() waiting forever.
        async for entry in self._watcher:
            if entry is None:
                continue
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                ended(int(entry.key))
            else:
                recorded(lease_decoder.decode(entry.value))

    async def unsubscribe(self) -> None:
        if self._watcher is not None:
            await self._watcher.stop()
