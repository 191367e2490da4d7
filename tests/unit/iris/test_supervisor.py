"""`iris up`'s restart backoff: doubling while a service keeps dying young, reset once it ran a while."""

from __future__ import annotations

from iris.launch.supervisor import HEALTHY_S, RESTART_MAX_S, RESTART_MIN_S, next_backoff_s


def test_backoff_doubles_up_to_the_cap_and_resets_after_a_healthy_run() -> None:
    waits = []
    backoff = 0.0
    for _ in range(8):
        backoff = next_backoff_s(backoff, ran_s=1.0)
        waits.append(backoff)
    assert waits[:3] == [RESTART_MIN_S, RESTART_MIN_S * 2, RESTART_MIN_S * 4]
    assert waits[-1] == RESTART_MAX_S
    assert next_backoff_s(RESTART_MAX_S, ran_s=HEALTHY_S) == RESTART_MIN_S
