"""The seed experiment's outputs: a Markdown report, the JSON behind it, and two PNG plots per user
behaviour (per-request latency over time by tier and arm; latency CDF by tier and arm). matplotlib draws
headless (Agg)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)

ARM_TITLES = {
    "fifo": "FIFO",
    "iris": "Iris (WFQ)",
    "iris-preempt": "Iris (WFQ + preemption)",
    "paid-alone": "paid tier alone",
}
TIER_COLORS = {"paid": "tab:blue", "open-source": "tab:orange"}
ARM_STYLES = {"fifo": ":", "iris": "-", "iris-preempt": "-.", "paid-alone": "--"}


def _tables(behaviour: str, block: dict[str, Any]) -> list[str]:
    lines = [f"### {behaviour} loop" if behaviour == "closed" else f"### {behaviour}", ""]
    lines += ["| arm | tier | done | rejected | p50 s | p90 s | max s |", "|---|---|---|---|---|---|---|"]
    for arm, s in block["summary"].items():
        for tier, t in s["tiers"].items():
            rejected = ", ".join(f"{c} {n}" for c, n in t["rejected"].items()) or "0"
            cells = [ARM_TITLES[arm], tier, t["completed"], rejected, t["p50_s"], t["p90_s"], t["max_s"]]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "| arm | requests/s | tokens/s | makespan s | requests/s per run |", "|---|---|---|---|---|"]
    for arm, s in block["summary"].items():
        per_run = ", ".join(str(r["requests_per_s"]) for r in s.get("runs", []))
        cells = [ARM_TITLES[arm], s["requests_per_s"], s["tokens_per_s"], s["makespan_s"], per_run]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    for v in block.get("verdicts", {"iris": block["verdict"]}).values():
        lines += ["", *_verdict_lines(behaviour, v)]
    lines += [
        "",
        f"![latency over time]({behaviour}-latency-over-time.png)",
        f"![latency CDF]({behaviour}-latency-cdf.png)",
        "",
    ]
    return lines


def _verdict_lines(behaviour: str, v: dict[str, Any]) -> list[str]:
    t = v["targets"]
    name = ARM_TITLES[v.get("arm", "iris")]
    ideal = v.get("closed_loop_ideal", {}) if behaviour == "closed" else {}
    fifo_ideal = f", fluid ideal {ideal['paid_p50_vs_fifo']}" if ideal else ""
    alone_ideal = f", fluid ideal {ideal['paid_p50_vs_alone']}" if ideal else ""
    return [
        f"- paid p50, {name} / FIFO: **{v['paid_p50_vs_fifo']}** (target ≤ {t['paid_p50_vs_fifo']}{fifo_ideal})",
        f"- paid p50, {name} / paid alone: **{v['paid_p50_vs_alone']}** "
        f"(target ≤ {t['paid_p50_vs_alone']}{alone_ideal})",
        f"- throughput, {name} / FIFO: **{v['throughput_vs_fifo']}** requests/s, {v['tokens_per_s_vs_fifo']} "
        f"tokens/s (target ≥ {t['throughput_vs_fifo']})",
        f"- open-source requests starved in {name} (neither answered nor given a typed deadline error in "
        f"time): **{v['open_source_starved']}**",
    ]


def plot_over_time(samples: list[dict[str, Any]], path: Path, behaviour: str) -> None:
    arms = [a for a in ARM_TITLES if any(s["arm"] == a for s in samples)]
    fig, axes = plt.subplots(1, len(arms), figsize=(5 * len(arms), 4), sharey=True, squeeze=False)
    for ax, arm in zip(axes[0], arms, strict=True):
        for tier, color in TIER_COLORS.items():
            points = [s for s in samples if s["arm"] == arm and s["tier"] == tier and s["outcome"] == "ok"]
            ax.scatter([p["submitted_s"] for p in points], [p["latency_s"] for p in points], s=14, c=color, label=tier)
        ax.set_title(ARM_TITLES[arm])
        ax.set_xlabel("submitted at (s since start)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("latency, submit → answer (s)")
    axes[0][-1].legend(title="tier")
    fig.suptitle(f"Per-request latency over time ({behaviour})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cdf(samples: list[dict[str, Any]], path: Path, behaviour: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm, style in ARM_STYLES.items():
        for tier, color in TIER_COLORS.items():
            lat = sorted(
                s["latency_s"] for s in samples if s["arm"] == arm and s["tier"] == tier and s["outcome"] == "ok"
            )
            if lat:
                share = [(i + 1) / len(lat) for i in range(len(lat))]
                ax.step(lat, share, where="post", linestyle=style, color=color, label=f"{ARM_TITLES[arm]} · {tier}")
    ax.set_xlabel("latency, submit → answer (s)")
    ax.set_ylabel("share of requests answered")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"Latency CDF by tier and scheduler ({behaviour})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _labelling(setup: dict[str, Any]) -> str:
    workloads = setup.get("workloads", {})
    if setup.get("labels", "one-workload") == "reference":
        where = (
            "labelled as the reference labels them: a workload per tier ("
            + ", ".join(f"`{w}` priority {setup['priorities'][tier]}" for tier, w in workloads.items())
            + "), no configured weights"
        )
    else:
        where = "all users in workload `default` (`--labels one-workload`), priorities 5 and 1"
    if setup.get("mode") == "admission":
        how = (
            f"admission mode: each call asks `iris.admit.<model>` for a ticket, calls the app's own model "
            f"({setup['model_call_s']} s a call on average, 0.5-1.5x by prompt) and releases the ticket"
        )
    else:
        how = "requests through Iris to its worker"
    return f'Requests {where}; {how}; Iris arm `priority_mode = "{setup.get("priority_mode", "share")}"`.'


def write_report(setup: dict[str, Any], results: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Iris seed experiment",
        "",
        f"{setup['users']['paid']} paid users (priority 5) and {setup['users']['open-source']} open-source users "
        f"(priority 1), {setup['prompts_per_user']} prompts each, max_tokens {setup['max_tokens']}, max concurrency "
        f"{setup['max_concurrency']}, queue timeout {setup['queue_timeout_s']:.0f} s, max in-flight "
        f"{setup['max_inflight_s']:.0f} s; model `{setup['model']}` ({' '.join(setup['worker_args']) or 'embedded'}"
        f"{''.join(f', {k}={v}' for k, v in setup.get('worker_env', {}).items())}); "
        f"{setup['when']}. Latency is submit → final answer.",
        "",
        _labelling(setup),
        "",
    ]
    for behaviour, block in results.items():
        lines += _tables(behaviour, block)
        plot_over_time(block["samples"], out_dir / f"{behaviour}-latency-over-time.png", behaviour)
        plot_cdf(block["samples"], out_dir / f"{behaviour}-latency-cdf.png", behaviour)
    report = {"setup": setup, "results": results}
    (out_dir / "report.md").write_text("\n".join(lines))
    (out_dir / "seed.json").write_text(json.dumps(report, indent=1))
    print("\n".join(line for line in lines if not line.startswith("![")))
    print(f"saved {out_dir / 'report.md'}, seed.json and PNG plots")
    return report
