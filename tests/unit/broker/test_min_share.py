"""WFQ minimum share: under saturation every waiting flow (and workload) is served at least `min_share`
as fast as the most favoured one at its level, however steep the weights; with 0 the plain weights rule."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.queue import Eligible
from broker.core.wfq import WfqQueue
from tests.unit.builders import assert_min_share, req, saturate


def test_priority_1_beside_priority_100_gets_the_minimum_share() -> None:
    flows = {("w", "paid", 100): 100, ("w", "free", 1): 100}
    plain = saturate(WfqQueue(), flows, 2020)
    floored = saturate(WfqQueue(min_share=0.2), flows, 2020)
    assert plain[("w", "free", 1)] / plain[("w", "paid", 100)] < 0.02
    assert abs(floored[("w", "free", 1)] / floored[("w", "paid", 100)] - 0.2) < 0.01


@settings(max_examples=300, deadline=None)
@given(
    priorities=st.lists(st.integers(1, 100), min_size=2, max_size=6),
    costs=st.lists(st.integers(1, 500), min_size=6, max_size=6),
    min_share=st.floats(0.01, 1.0),
    pops=st.integers(50, 600),
)
def test_no_flow_falls_below_its_minimum_share(
    priorities: list[int], costs: list[int], min_share: float, pops: int
) -> None:
    """Between any two backlogged flows f, g of a workload: served(f) >= min_share * (served(g) - c_max)."""
    flows = {("w", f"u{i}", p): costs[i] for i, p in enumerate(priorities)}
    served = saturate(WfqQueue(min_share=min_share), flows, pops)
    c_max = max(flows.values())
    assert_min_share(served, flows, min_share, c_max)


@settings(max_examples=300, deadline=None)
@given(
    weights=st.lists(st.floats(0.01, 100), min_size=2, max_size=5),
    min_share=st.floats(0.01, 1.0),
    pops=st.integers(50, 600),
)
def test_no_workload_falls_below_its_minimum_share(weights: list[float], min_share: float, pops: int) -> None:
    names = [f"w{i}" for i in range(len(weights))]
    flows = {(name, "", 1): 100 for name in names}
    served = saturate(WfqQueue(dict(zip(names, weights, strict=True)), min_share=min_share), flows, pops)
    assert_min_share(served, flows, min_share, 100)


def test_skipped_flows_keep_their_turn() -> None:
    """A flow that may not start now (its user at its cap) is passed over without being charged."""
    queue = WfqQueue()
    for user in ("alice", "alice", "bob", "bob"):
        queue.push(req("w", user, 1, 100))
    first = queue.pop()
    assert first is not None and first.user == "alice"
    skip_bob = Eligible(label="user", at_cap=frozenset({"bob"}))
    second = queue.pop(skip_bob)
    assert second is not None and second.user == "alice"
    assert queue.pop(Eligible(label="user", at_cap=frozenset({"bob", "alice"}))) is None
    rest = [queue.pop(), queue.pop()]
    assert [r.user for r in rest if r] == ["bob", "bob"] and queue.pop() is None
