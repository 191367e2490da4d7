"""What the chaos run (deploy/chaos.py) must show, checked on its report: the failures, each in a line."""

from __future__ import annotations

# compose stops dependents first: the Iris services (workers' stop_grace_period 30 s), then NATS (15 s)
STOP_GRACE_S = 30.0 + 15.0


def checks(report: dict[str, object], requests: int) -> list[str]:
    failures = []
    if report["smoke"] != {"gateway": "http 200", "raw_nats": "result"}:
        failures.append(f"smoke requests not answered: {report['smoke']}")
    if report["final_replies_per_request"] != {1: requests}:
        failures.append(f"final replies per request: {report['final_replies_per_request']} (want {{1: {requests}}})")
    statuses = report["gateway_statuses"]
    assert isinstance(statuses, dict)
    failed_calls = {status: n for status, n in statuses.items() if not status.startswith("http 200")}
    if failed_calls:
        failures.append(f"gateway calls not answered 200: {failed_calls}")
    if report["results_twice"]:
        failures.append(f"{report['results_twice']} requests got two results")
    down = report.get("down")
    if isinstance(down, dict):
        if down["left_mid_answer"]:
            failures.append(f"{down['left_mid_answer']} answers left mid-way by compose down")
        if not down["exit_codes"]:
            failures.append("no container's exit code seen in docker events: SIGKILLs unknown")
        killed = {name: code for name, code in down["exit_codes"].items() if code == 137}
        if killed:
            failures.append(f"SIGKILLed past their stop grace period: {killed}")
        if down["down_s"] > STOP_GRACE_S:
            failures.append(f"compose down took {down['down_s']} s (stop timeout {STOP_GRACE_S} s)")
    return failures
