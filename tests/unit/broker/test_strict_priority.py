"""`priority_mode = "strict"`: a higher priority band is always served first, fair inside a band, and
`min_share` keeps the lower bands from starving (pure, no server)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.queue import Eligible, make_queue
from broker.core.strict import StrictQueue
from tests.unit.builders import assert_min_share, assert_shares, req, saturate


def test_higher_band_always_first() -> None:
    queue = StrictQueue()
    for priority in (1, 5, 1, 3, 5, 1):
        queue.push(req("w", f"u{priority}", priority))
    assert [r.priority for r in iter(queue.pop, None)] == [5, 5, 3, 1, 1, 1]


def test_across_workloads_too() -> None:
    flows = {("paid", "p", 5): 100, ("open-source", "o", 1): 100}
    served = saturate(StrictQueue(), flows, 500)
    assert served[("open-source", "o", 1)] == 0


def test_fair_inside_a_band() -> None:
    queue = StrictQueue({"a": 1, "b": 3})
    flows = {("a", "x", 2): 100, ("b", "y", 2): 100, ("b", "z", 2): 100}
    assert_shares(saturate(queue, flows, 4000), {("a", "x", 2): 0.25, ("b", "y", 2): 0.375, ("b", "z", 2): 0.375})


def test_min_share_serves_the_lower_bands() -> None:
    flows = {("w", "top", 9): 100, ("w", "low", 1): 100}
    served = saturate(StrictQueue(min_share=0.1), flows, 5500)
    assert abs(served[("w", "low", 1)] / served[("w", "top", 9)] - 0.1) < 0.01


@settings(max_examples=100, deadline=None)
@given(
    priorities=st.lists(st.integers(1, 100), min_size=2, max_size=5, unique=True),
    min_share=st.floats(0.01, 1.0),
    pops=st.integers(50, 600),
)
def test_no_band_starves_with_min_share(priorities: list[int], min_share: float, pops: int) -> None:
    flows = {(f"w{i}", "u", p): 100 for i, p in enumerate(priorities)}
    served = saturate(StrictQueue(min_share=min_share), flows, pops)
    assert_min_share(served, flows, min_share, 100)


def test_an_ineligible_band_lets_the_next_one_go() -> None:
    queue = make_queue("wfq", priority_mode="strict")
    queue.push(req("w", "capped", 5))
    queue.push(req("w", "free", 1))
    request = queue.pop(Eligible(label="user", at_cap=frozenset({"capped"})))
    assert request is not None and request.user == "free"
    rest = queue.pop()
    assert rest is not None and rest.user == "capped" and len(queue) == 0


def test_position_counts_the_bands_above() -> None:
    queue = StrictQueue()
    high = [req("w", "h", 7) for _ in range(4)]
    low = req("w", "l", 1)
    for r in [low, *high]:
        queue.push(r)
    assert queue.position(low.stream_seq) == 4
    assert queue.remove(low.stream_seq) is low and low.stream_seq not in queue and len(queue) == 4
