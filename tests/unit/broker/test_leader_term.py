"""The leader's local term: it ends well before the server lets the key expire."""

from __future__ import annotations

from broker.leadership import VALID_FRACTION, LeaderTerm


def test_term_ends_before_the_key_can_expire() -> None:
    term = LeaderTerm(ttl_s=2.0)
    assert not term.holds(0.0)
    term.won(revision=7, sent_at=100.0)
    assert term.holds(100.0 + 2.0 * VALID_FRACTION - 0.01)
    assert not term.holds(100.0 + 2.0 * VALID_FRACTION)
    assert not term.holds(102.0)  # the server's TTL counts from later than `sent_at`


def test_a_late_renewal_does_not_extend_a_lapsed_term() -> None:
    term = LeaderTerm(ttl_s=2.0)
    term.won(revision=1, sent_at=0.0)
    term.won(revision=2, sent_at=0.5)  # renewal sent at 0.5, answered whenever: counted from 0.5
    assert term.holds(1.9) and not term.holds(2.0)


def test_lost_term_holds_nothing() -> None:
    term = LeaderTerm(ttl_s=2.0)
    term.won(revision=3, sent_at=10.0)
    term.lost()
    assert term.revision is None and not term.holds(10.1)
