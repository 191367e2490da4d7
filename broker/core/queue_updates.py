"""When to tell a waiting client where it stands again (`QueueUpdate`), per model pool. Pure.

A client hears once when queued; again once half of the requests ahead of it have started, and never
sooner than `UPDATE_EVERY_MS` after its last update, so a fast-draining backlog does not chatter. Positions
are not re-scanned: the position now is the old one minus the leases handed out since (`dispatched`).
Entries wait first for their time (a heap by ms), then for their progress (a heap by dispatch count).
"""

from __future__ import annotations

import heapq
from collections.abc import Container
from dataclasses import dataclass, field

MIN_POSITION_FOR_UPDATES = 4  # nearer the head, the update sent when queued says enough
UPDATE_EVERY_MS = 1_000  # at most one QueueUpdate per request per second

# (not before ms | due at dispatch count, seq, position then, dispatch count then, reply_to, request id)
_Entry = tuple[int, int, int, int, str, str]


@dataclass
class QueueUpdatePlan:
    timed: list[_Entry] = field(default_factory=list)
    due: list[_Entry] = field(default_factory=list)

    def plan(self, seq: int, position: int, reply_to: str, request_id: str, dispatched: int, now_ms: int) -> None:
        if position >= MIN_POSITION_FOR_UPDATES:
            heapq.heappush(self.timed, (now_ms + UPDATE_EVERY_MS, seq, position, dispatched, reply_to, request_id))

    def take_due(self, waiting: Container[int], dispatched: int, now_ms: int) -> list[tuple[int, int, str, str]]:
        """(seq, position now, reply_to, request id) of every waiting request due an update; each is
        planned again from its new position by the caller."""
        while self.timed and self.timed[0][0] <= now_ms:
            _, seq, position, then, reply_to, request_id = heapq.heappop(self.timed)
            heapq.heappush(self.due, (then + (position + 1) // 2, seq, position, then, reply_to, request_id))
        out = []
        while self.due and self.due[0][0] <= dispatched:
            _, seq, position, then, reply_to, request_id = heapq.heappop(self.due)
            if seq in waiting:  # else started, cancelled or expired meanwhile
                out.append((seq, max(0, position - (dispatched - then)), reply_to, request_id))
        return out
