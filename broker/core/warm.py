"""The standby's warm backlog: every request it has read from the stream while another broker leads, as
the compact `WaitingRequest` the scheduler indexes, so that once elected it indexes the whole backlog at
once instead of at the pace of a replaying consumer, and its first leases already follow the fair order.

It forgets what left: a request whose lease ended (the standby hears `LeasesDone` as the leader does), one
past its deadline, and, on hand-over, whatever the stream no longer holds. A message it cannot index (a bad
subject or header) is the leader's to dead-letter, but a leader that died or froze may not have got to it:
the backlog keeps the sequences of the last `KEEP_UNPARSED` of them, and the term dead-letters those the
stream still holds. It decides nothing; an elected term gives what it hands over to `Scheduler.rebuild`. Pure.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Container

from broker.core.queue import WaitingRequest

KEEP_UNPARSED = 10_000  # a leader dead-letters them as it reads them: only the latest can be left undone


class WarmBacklog:
    def __init__(self) -> None:
        self._requests: dict[int, WaitingRequest] = {}
        self._deadlines: list[tuple[int, int]] = []  # (deadline_ms, seq), lazy
        self.last_seq = 0  # highest stream sequence read: the term's own feed starts after it
        self._unparsed: deque[int] = deque(maxlen=KEEP_UNPARSED)

    def __len__(self) -> int:
        return len(self._requests)

    def add(self, request: WaitingRequest) -> None:
        self._requests[request.stream_seq] = request
        heapq.heappush(self._deadlines, (request.deadline_ms, request.stream_seq))

    def read_up_to(self, seq: int) -> None:
        """The feed delivered `seq` (indexed or not: an unparseable message is the leader's to dead-letter)."""
        self.last_seq = max(self.last_seq, seq)

    def unparsed(self, seq: int) -> None:
        """`seq` could not be indexed: the leader's to dead-letter, unless it never gets to it."""
        self._unparsed.append(seq)

    def forget(self, seq: int) -> None:
        self._requests.pop(seq, None)

    def expire(self, now_ms: int) -> None:
        while self._deadlines and self._deadlines[0][0] <= now_ms:
            _, seq = heapq.heappop(self._deadlines)
            request = self._requests.get(seq)
            if request is not None and request.deadline_ms <= now_ms:
                del self._requests[seq]
        if len(self._deadlines) > 2 * len(self._requests) + 1024:
            self._deadlines = [(r.deadline_ms, seq) for seq, r in self._requests.items()]
            heapq.heapify(self._deadlines)

    def hand_over(self, first_seq: int, gone: Container[int]) -> tuple[list[WaitingRequest], list[int]]:
        """Everything still in the stream (from `first_seq` on, not in `gone`), in stream order: the requests,
        and the sequences of the unparseable messages; the backlog is empty afterwards."""
        kept = [r for seq, r in sorted(self._requests.items()) if seq >= first_seq and seq not in gone]
        unparsed = sorted(seq for seq in self._unparsed if seq >= first_seq and seq not in gone)
        self._requests, self._deadlines, self._unparsed = {}, [], deque(maxlen=KEEP_UNPARSED)
        return kept, unparsed
