"""The overload bench's open-loop plan: the high arrivals are the same whatever the low rate (so the
unloaded and loaded phases compare the same requests), in time order, labelled as the reference labels."""

from __future__ import annotations

from iris.bench.overload.plan import TIERS, USERS_PER_TIER, plan


def test_high_arrivals_do_not_depend_on_the_low_rate() -> None:
    alone = plan(2.0, 0.0, 50, seed=3)
    loaded = plan(2.0, 6.0, 50, seed=3)
    assert [a for a in loaded if a.tier == "high"] == alone
    assert len(alone) == 50 and all(a.tier == "high" for a in alone)
    lows = [a for a in loaded if a.tier == "low"]
    assert lows and max(a.at_s for a in lows) <= alone[-1].at_s
    assert [a.at_s for a in loaded] == sorted(a.at_s for a in loaded)


def test_arrivals_spread_over_five_users_per_tier() -> None:
    arrivals = plan(3.0, 3.0, 40, seed=1)
    for tier, (workload, _priority) in TIERS.items():
        users = {a.user for a in arrivals if a.tier == tier}
        assert users == {f"{workload}-{i}" for i in range(1, USERS_PER_TIER + 1)}
    assert plan(3.0, 3.0, 40, seed=1) == arrivals != plan(3.0, 3.0, 40, seed=2)
