"""The standby's warm backlog hands over what the stream still holds: the requests in stream order, and the
sequences of the messages it could not index (the leader's to dead-letter, unless it died first)."""

from __future__ import annotations

from broker.core.queue import WaitingRequest
from broker.core.warm import KEEP_UNPARSED, WarmBacklog


def waiting(seq: int) -> WaitingRequest:
    return WaitingRequest(seq, f"r{seq}", "m", "default", "_INBOX.x", 10**15, 0, 1, "", 100)


def test_unparsed_messages_still_in_the_stream_are_handed_over() -> None:
    backlog = WarmBacklog()
    for seq in range(1, 11):
        backlog.read_up_to(seq)
        if seq % 3 == 0:
            backlog.unparsed(seq)
        else:
            backlog.add(waiting(seq))
    requests, unparsed = backlog.hand_over(first_seq=2, gone={6, 7})
    assert [r.stream_seq for r in requests] == [2, 4, 5, 8, 10]
    assert unparsed == [3, 9]
    assert backlog.hand_over(first_seq=1, gone=set()) == ([], [])  # empty afterwards
    assert backlog.last_seq == 10


def test_only_the_latest_unparsed_are_kept() -> None:
    backlog = WarmBacklog()
    for seq in range(1, KEEP_UNPARSED + 101):
        backlog.unparsed(seq)
    _, unparsed = backlog.hand_over(first_seq=1, gone=set())
    assert unparsed == list(range(101, KEEP_UNPARSED + 101))
