"""The tickets granted to apps that run their own model (Aperture-style admission), by id and by cut-off.

A ticket is a lease held by the app instead of a worker: it counts against its model's capacity but takes no
worker slot, and ends when the app releases it or at its cut-off (`max_inflight`, or `TICKET_MAX_HOLD_MS`
when that is 0: an app that vanishes must not hold a slot forever). The cut-off heap is lazy: an entry whose
ticket has ended, or was granted again with another cut-off, is skipped when it comes up.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from schemas.headers import MAX_DEADLINE_S
from schemas.messages import Lease

TICKET_MAX_HOLD_MS = int(MAX_DEADLINE_S * 1000)


@dataclass
class TicketBook:
    _by_id: dict[str, int] = field(default_factory=dict)  # ticket id (request id) → stream sequence
    _cutoffs: list[tuple[int, int]] = field(default_factory=list)  # (cutoff_ms, seq), lazy

    def hold(self, lease: Lease) -> None:
        self._by_id[lease.request_id] = lease.stream_seq
        heapq.heappush(self._cutoffs, (lease.cutoff_ms, lease.stream_seq))

    def seq_of(self, ticket_id: str) -> int | None:
        return self._by_id.get(ticket_id)

    def forget(self, ticket_id: str) -> None:
        self._by_id.pop(ticket_id, None)

    def __len__(self) -> int:
        """Tickets held."""
        return len(self._by_id)

    def past_cutoff(self, now_ms: int) -> list[tuple[int, int]]:
        """(cutoff_ms, seq) of every entry due by now; the caller checks each is still that ticket."""
        due = []
        while self._cutoffs and self._cutoffs[0][0] <= now_ms:
            due.append(heapq.heappop(self._cutoffs))
        return due
