"""Weighted fair queuing shares, measured by popping a saturated queue (pure, no server)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.queue import WaitingRequest
from broker.core.wfq import WfqQueue, estimate_prompt_tokens
from tests.unit.builders import assert_shares, fill, req, served_tokens


def test_workload_weights_1_2_4() -> None:
    queue = WfqQueue({"a": 1, "b": 2, "c": 4})
    flows = {("a", "", 1): 100, ("b", "", 1): 100, ("c", "", 1): 100}
    fill(queue, flows, 20)
    assert_shares(served_tokens(queue, 7000, flows), {k: w / 7 for k, w in zip(flows, (1, 2, 4), strict=True)})


def test_greedy_user_gets_no_more_than_an_equal_share() -> None:
    queue = WfqQueue()
    flows = {("w", "greedy", 1): 100, ("w", "u1", 1): 100, ("w", "u2", 1): 100}
    fill(queue, {("w", "greedy", 1): 100}, 500)  # 10x the others' backlog
    fill(queue, {("w", "u1", 1): 100, ("w", "u2", 1): 100}, 50)
    assert_shares(served_tokens(queue, 3000, flows), {k: 1 / 3 for k in flows})


def test_priority_multiplies_weight() -> None:
    queue = WfqQueue()
    flows = {("w", "paid", 5): 100, ("w", "free", 1): 100}
    fill(queue, flows, 10)
    assert_shares(served_tokens(queue, 6000, flows), {("w", "paid", 5): 5 / 6, ("w", "free", 1): 1 / 6})


def test_cost_is_tokens_not_requests() -> None:
    queue = WfqQueue()
    flows = {("w", "long", 1): 1000, ("w", "short", 1): 100}
    fill(queue, flows, 10)
    served = served_tokens(queue, 5500, flows)
    assert_shares(served, {("w", "long", 1): 0.5, ("w", "short", 1): 0.5})


def test_newcomer_is_not_behind_a_deep_backlog() -> None:
    queue = WfqQueue()
    for _ in range(10_000):
        queue.push(req(user="flood"))
    for _ in range(100):
        queue.pop()  # the flood has been running for a while
    newcomer = req(user="alice")
    queue.push(newcomer)
    assert queue.position(newcomer.stream_seq) == 0
    assert newcomer in (queue.pop(), queue.pop())


def test_idle_flow_banks_no_credit() -> None:
    queue = WfqQueue()
    fill(queue, {("w", "busy", 1): 100}, 1000)
    for _ in range(500):
        queue.pop()  # "late" was idle all this time
    fill(queue, {("w", "late", 1): 100}, 100)
    first_100 = Counter(r.user for r in (queue.pop() for _ in range(100)) if r is not None)
    assert 45 <= first_100["late"] <= 55  # an equal share from now on, not a burst to catch up


def test_removed_requests_never_pop() -> None:
    queue = WfqQueue()
    requests = [req(user=u) for u in ("a", "b", "a", "c")]
    for r in requests:
        queue.push(r)
    assert queue.remove(requests[0].stream_seq) == requests[0]
    assert queue.remove(requests[3].stream_seq) == requests[3]
    popped = [queue.pop(), queue.pop(), queue.pop()]
    assert sorted(r.stream_seq for r in popped if r) == sorted([requests[1].stream_seq, requests[2].stream_seq])
    assert popped[2] is None and len(queue) == 0


def test_prompt_estimate_from_body_size() -> None:
    assert estimate_prompt_tokens(400) == 100
    assert estimate_prompt_tokens(0) == 1


def test_charge_back_makes_actual_tokens_fair_despite_equal_estimates() -> None:
    """Both flows are estimated at 100 tokens a request, but "long" really uses 1000: charging the
    difference back as requests finish gives each flow half the actual tokens."""
    queue = WfqQueue()
    actual = {"long": 1000, "short": 100}
    fill(queue, {("w", "long", 1): 100, ("w", "short", 1): 100}, 10)
    served: Counter[str] = Counter()
    for _ in range(4000):
        request = queue.pop()
        assert request is not None
        used = actual[request.user]
        served[request.user] += used
        queue.charge_back(request, used - request.cost_tokens)
        queue.push(req("w", request.user, 1, 100))
    share = served["long"] / (served["long"] + served["short"])
    assert abs(share - 0.5) <= 0.025, share


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from("push pop remove".split()),
            st.sampled_from("ab"),
            st.sampled_from("xyz"),
            st.integers(1, 5),
            st.integers(0, 30),
        ),
        max_size=200,
    )
)
def test_every_pushed_request_pops_exactly_once(ops: list[tuple[str, str, str, int, int]]) -> None:
    queue = WfqQueue({"a": 1, "b": 3})
    waiting: dict[int, WaitingRequest] = {}
    out: list[int] = []
    for op, workload, user, priority, index in ops:
        if op == "push":
            r = req(workload, user, priority, cost=10 * priority)
            queue.push(r)
            waiting[r.stream_seq] = r
        elif op == "pop":
            r2 = queue.pop()
            assert (r2 is None) == (not waiting)
            if r2 is not None:
                out.append(r2.stream_seq)
                del waiting[r2.stream_seq]
        elif waiting:
            seq = sorted(waiting)[index % len(waiting)]
            assert queue.remove(seq) is waiting.pop(seq)
        assert len(queue) == len(waiting)
    while (r3 := queue.pop()) is not None:
        out.append(r3.stream_seq)
        del waiting[r3.stream_seq]
    assert not waiting and len(out) == len(set(out))
