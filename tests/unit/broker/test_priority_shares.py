"""Priority weighs across workloads: a backlogged workload's share is its weight x the priority it serves;
users split it equally, a user's share never grows by spreading requests over priorities or end users,
and the queue's state stays proportional to what waits (pure, no server)."""

from __future__ import annotations

from collections import Counter

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from broker.core.wfq import WfqQueue
from tests.unit.builders import Flow, assert_min_share, assert_shares, req, saturate


def test_reference_labels_alone_give_paid_five_times_open_source() -> None:
    """Two workloads, priority 5 and 1, no weights: 5:1 (the Aperture experiment's labels)."""
    flows = {("paid", "p1", 5): 100, ("open-source", "o1", 1): 100}
    assert_shares(saturate(WfqQueue(), flows, 6000), {("paid", "p1", 5): 5 / 6, ("open-source", "o1", 1): 1 / 6})


def test_workloads_at_priorities_1_2_4_with_a_greedy_user() -> None:
    """a/b/c at priorities 1/2/4, no weights; c's greedy user keeps 5x the outstanding requests of c's other
    user: 1/7, 2/7, 2/7, 2/7."""
    queue = WfqQueue()
    flows = {("a", "a1", 1): 100, ("b", "b1", 2): 100, ("c", "greedy", 4): 100, ("c", "c2", 4): 100}
    for _ in range(12):
        queue.push(req("c", "greedy", 4))  # 15 outstanding with the 3 below, against c2's 3
    target = dict(zip(flows, (1 / 7, 2 / 7, 2 / 7, 2 / 7), strict=True))
    assert_shares(saturate(queue, flows, 7000), target)


def test_configured_weights_combine_with_priority() -> None:
    weighted = {("x", "u", 1): 100, ("y", "u", 1): 100}
    assert_shares(saturate(WfqQueue({"x": 3, "y": 1}), weighted, 4000), {("x", "u", 1): 0.75, ("y", "u", 1): 0.25})
    crossed = {("x", "u", 5): 100, ("y", "u", 1): 100}  # weight 1 at priority 5 beside weight 5 at priority 1
    assert_shares(saturate(WfqQueue({"x": 1, "y": 5}), crossed, 4000), {("x", "u", 5): 0.5, ("y", "u", 1): 0.5})


def per_user(served: Counter[Flow]) -> Counter[str]:
    out: Counter[str] = Counter()
    for (_, user, _), tokens in served.items():
        out[user] += tokens
    return out


def test_spreading_over_priorities_gets_one_priority_5_share() -> None:
    """One user sending at priorities 1..5 at once holds one flow served at 5, not weight 1+2+3+4+5."""
    flows = {("w", "spread", p): 100 for p in range(1, 6)} | {("w", "plain", 5): 100}
    served = per_user(saturate(WfqQueue(), flows, 6000))
    assert abs(served["spread"] / (served["spread"] + served["plain"]) - 0.5) <= 0.025, served


def test_end_users_split_their_keys_share() -> None:
    """A key whose callers send 50 different OpenAI `user` values holds what a key with one holds."""
    queue = WfqQueue()
    served: Counter[str] = Counter()
    for i in range(50):
        queue.push(req("w", "many", 1, end_user=f"e{i}"))
    for _ in range(3):
        queue.push(req("w", "one", 1, end_user="e0"))
    for _ in range(5000):
        request = queue.pop()
        assert request is not None
        served[request.user] += request.cost_tokens
        queue.push(req("w", request.user, 1, end_user=request.end_user))
    assert abs(served["many"] / (served["many"] + served["one"]) - 0.5) <= 0.025, served


def test_end_users_share_their_key_equally() -> None:
    queue = WfqQueue()
    served: Counter[str] = Counter()
    for i in range(5):
        for _ in range(2 + 10 * i):  # backlogs of very different depth
            queue.push(req("w", "key", 1, end_user=f"e{i}"))
    for _ in range(3000):
        request = queue.pop()
        assert request is not None
        served[request.end_user] += request.cost_tokens
        queue.push(req("w", "key", 1, end_user=request.end_user))
    assert all(abs(tokens / sum(served.values()) - 0.2) <= 0.01 for tokens in served.values()), served


@settings(max_examples=40, deadline=None)
@given(
    workloads=st.lists(
        st.tuples(st.floats(0.5, 8), st.integers(1, 10), st.integers(1, 3), st.integers(20, 400)),
        min_size=2,
        max_size=4,
    )
)
def test_backlogged_shares_converge_to_the_formula(workloads: list[tuple[float, int, int, int]]) -> None:
    """Random weights, priorities, users per workload and request costs: each user's share is
    weight x priority / sum(weight x priority), split equally between its workload's users (+-5%)."""
    weights = {f"w{i}": weight for i, (weight, _, _, _) in enumerate(workloads)}
    flows = {
        (f"w{i}", f"u{j}", priority): cost
        for i, (_, priority, users, cost) in enumerate(workloads)
        for j in range(users)
    }
    total = sum(weights[f"w{i}"] * priority for i, (_, priority, _, _) in enumerate(workloads))
    target = {
        (workload, user, priority): weights[workload] * priority / total / workloads[int(workload[1:])][2]
        for workload, user, priority in flows
    }
    # Enough turns that the least served flow gets 200 of them, so one turn more or less is within the 5%:
    # a turn serves on average 1 / sum(share / cost) tokens, and flow f gets share_f / cost_f of the turns.
    turns_per_pop = {f: target[f] / cost / sum(target[g] / c for g, c in flows.items()) for f, cost in flows.items()}
    pops = int(200 / min(turns_per_pop.values())) + 1
    assume(pops <= 40_000)
    assert_shares(saturate(WfqQueue(weights), flows, pops), target)


@settings(max_examples=100, deadline=None)
@given(
    priorities=st.lists(st.integers(1, 100), min_size=2, max_size=5),
    min_share=st.floats(0.01, 1.0),
    pops=st.integers(50, 600),
)
def test_no_workload_starves_across_priorities(priorities: list[int], min_share: float, pops: int) -> None:
    """Workloads at any priorities: served(f) >= min_share * (served(g) - c_max) for any two backlogged ones."""
    flows = {(f"w{i}", "u", p): 100 for i, p in enumerate(priorities)}
    served = saturate(WfqQueue(min_share=min_share), flows, pops)
    assert_min_share(served, flows, min_share, 100)


def test_many_users_come_and_go_and_the_state_stays_small() -> None:
    """100,000 distinct users, a thousand at a time, each send one request and are served beside three
    users that stay backlogged: afterwards the queue remembers only what is active, not the history."""
    queue = WfqQueue(min_share=0.1)
    for user in ("s1", "s2", "s3"):
        for _ in range(3):
            queue.push(req("steady", user, 2))
    for batch in range(100):
        for i in range(batch * 1000, batch * 1000 + 1000):
            queue.push(req(f"w{i % 7}", f"user{i}", 1 + i % 5, cost=50 + i % 200, end_user=f"e{i % 3}"))
        while len(queue) > 9:
            request = queue.pop()
            assert request is not None
            if request.workload == "steady":
                queue.push(req("steady", request.user, 2))
    assert queue.remembered() <= 20, queue.remembered()
    assert len(queue._tally.per_user) == 3 and len(queue._tally.per_workload) == 1
    assert list(queue._root.children) == ["steady"] and len(queue._root.children["steady"].children) == 3
