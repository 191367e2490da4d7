"""The start estimate behind `deadline_unmeetable` prices the work ahead of a request (its tokens under the
fair order, at the engine time workers report for answers of each size), not a mean service time x queue
position: a deep backlog of tiny requests behind which a long answer just finished is queued, a backlog
of long answers that truly cannot finish in time is still refused at admission (pure, no server)."""

from __future__ import annotations

from broker.core.decisions import Queued, Rejection
from broker.core.queue import WaitingRequest
from broker.core.scheduler import Scheduler, SchedulerLimits
from broker.core.service_time import ServiceTime
from schemas.errors import ErrorCode
from schemas.messages import Heartbeat, LeaseDone
from tests.unit.builders import verdict

T0 = 1_700_000_000_000
SLOTS = 8


def waiting(seq: int, workload: str, now: int, deadline_s: float, cost: int = 0) -> WaitingRequest:
    return WaitingRequest(
        seq, f"r{seq}", "m", workload, f"_INBOX.{seq}", now + int(deadline_s * 1000), now, cost_tokens=cost,
        prompt_tokens_est=4,
    )  # fmt: skip


def finish(scheduler: Scheduler, request: WaitingRequest, now: int, run_ms: float, completion: int) -> int:
    """Admit, lease and end one request that ran `run_ms` with `completion` tokens; returns the new now."""
    assert scheduler.enqueue(request, now).queued
    (lease,) = scheduler.dispatch(now).offers
    now += int(run_ms)
    scheduler.leases_done([LeaseDone(lease.stream_seq, "m", lease.workload, 4, completion, True, run_ms)], now)
    return now


def test_tiny_backlog_behind_a_long_answer_is_queued_and_a_hopeless_one_is_not() -> None:
    scheduler = Scheduler(SchedulerLimits(), T0)
    now = T0 + 2_000
    scheduler.heartbeat(Heartbeat("w", "m", SLOTS, SLOTS, [], 0.0, now), now)
    seq = 0
    for _ in range(20):  # tiny answers: 5 tokens in 3 ms
        seq += 1
        now = finish(scheduler, waiting(seq, "tiny", now, 150), now, 3.0, 1)
    seq += 1
    now = finish(scheduler, waiting(seq, "long", now, 150), now, 10_000.0, 2000)  # one long answer: 10 s
    verdicts = []
    for _ in range(3000):  # 3,000 one-token requests, 150 s deadlines: ~15,000 tokens, well under a minute
        seq += 1
        verdicts.append(verdict(scheduler.enqueue(waiting(seq, "tiny", now, 150), now)))
    assert all(isinstance(v, Queued) for v in verdicts), [v.message for v in verdicts if isinstance(v, Rejection)][:3]
    hopeless = []
    for _ in range(200):  # 200 answers of 2,000 tokens, 10 s each, on 8 slots: 250 s of work
        seq += 1
        hopeless.append(verdict(scheduler.enqueue(waiting(seq, "long", now, 150, cost=2004), now)))
    refused = [v for v in hopeless if isinstance(v, Rejection)]
    assert refused and all(v.code is ErrorCode.DEADLINE_UNMEETABLE for v in refused)
    assert 50 <= len(hopeless) - len(refused) <= 150  # what can start in time is queued: 120 or so


def test_service_time_is_a_line_that_one_size_cannot_erase() -> None:
    times = ServiceTime()
    times.learn(2004, 10_000.0)
    for _ in range(5_000):
        times.learn(5, 3.0)  # a long burst of tiny answers
    assert abs(times.answer_ms(2004) - 10_000) < 1 and abs(times.answer_ms(5) - 3.0) < 0.01
    assert abs(times.ms(3000, 15_000) - 9_000) < 1  # 3,000 tiny answers
    assert 4_000 < times.answer_ms(1004) < 6_000  # between the sizes seen: on the line through them
    assert abs(times.answer_ms(4008) - 20_000) < 1  # past the largest: proportional to its time per token
    noisy = ServiceTime()
    noisy.learn(60, 5_000.0)
    noisy.learn(66, 20_000.0)  # two nearby sizes, very different times (a loaded machine)
    assert noisy.answer_ms(300) < 100_000  # no extrapolated slope of 2,500 ms a token
    alone = ServiceTime()
    alone.learn(100, 50.0)
    assert alone.answer_ms(300) == 150.0 and alone.answer_ms(10) == 5.0  # one size only: proportional
