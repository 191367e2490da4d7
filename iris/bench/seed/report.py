"""The seed experiment's outputs: a Markdown report, the JSON behind it, two PNG plots per user behaviour
(per-request latency over time by tier and arm; latency CDF by tier and arm), and `report.html`: the
latency-over-time plots of the arms side by side ("before/after"), drawn in the browser by the status
page's own chart code, inlined so the file opens from disk with nothing else. matplotlib draws headless (Agg);
where it is not installed (the GPU carry leaves it out to fit in 64 MiB) the plots are left out, and
`redraw_plots` draws them later from seed.json."""

from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path
from typing import Any

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # (the backend must be chosen before pyplot loads)
except ImportError:
    plt = None  # type: ignore[assignment]

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
        f"(priority 1), {setup['prompts_per_user']} prompts each, max_tokens {setup['max_tokens']}"
        f"{' (every answer that long)' if setup.get('answers') == 'fixed' else ''}, max concurrency "
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
    report = {"setup": setup, "results": results}
    plots = redraw_plots(report, out_dir)
    (out_dir / "report.md").write_text("\n".join(lines))
    (out_dir / "seed.json").write_text(json.dumps(report, indent=1))
    (out_dir / "report.html").write_text(html_report(lines[2], results))
    print("\n".join(line for line in lines if not line.startswith("![")))
    plotted = " and PNG plots" if plots else "; no plots: no matplotlib"
    print(f"saved {out_dir / 'report.md'}, report.html, seed.json{plotted}")
    return report


_HTML_SCRIPT = """
var data = JSON.parse(document.getElementById("seed-data").textContent);
var colors = {"paid": "#3b7dd8", "open-source": "#e07a1f"};
Object.keys(data.behaviours).forEach(function (behaviour) {
  var block = data.behaviours[behaviour], row = document.getElementById("row-" + behaviour);
  Object.keys(block.arms).forEach(function (arm) {
    var tiers = block.arms[arm], box = document.createElement("div"), title = document.createElement("h3");
    title.textContent = data.titles[arm] || arm;
    box.appendChild(title);
    var svg = IrisCharts.svg("svg", {role: "img", "aria-label": title.textContent});
    box.appendChild(svg);
    row.appendChild(box);
    var series = Object.keys(tiers).map(function (tier) {
      return {label: tier, color: colors[tier], dots: true, points: tiers[tier]};
    });
    IrisCharts.draw(svg, {series: series, xMin: 0, xMax: IrisCharts.niceMax(block.x_max), yMax: block.y_max,
                          width: 380, height: 240, yUnit: " s",
                          xTicks: function (v) { return IrisCharts.number(v) + " s"; }});
  });
});
"""
_HTML_STYLE = (
    "body{font:14px system-ui,sans-serif;margin:24px;color:#1d1d28}.row{display:flex;gap:16px;flex-wrap:wrap}"
    ".row>div{flex:1;min-width:320px}h3{font-size:13px;margin:0}svg{width:100%;height:auto}"
    "svg text{font-size:10px;fill:#6b6b7b}svg .grid{stroke:#e3e3ea}svg .axis{stroke:#b9b9c6}"
)


def html_data(results: dict[str, Any]) -> dict[str, Any]:
    """Per behaviour and arm, each tier's answered requests as [submitted s, latency s]; one y scale per
    behaviour so the arms compare at a glance. No prompt or user name is part of it."""
    behaviours = {}
    for behaviour, block in results.items():
        ok = [s for s in block["samples"] if s["outcome"] == "ok"]
        arms: dict[str, dict[str, list[list[float]]]] = {}
        for s in ok:
            points = arms.setdefault(s["arm"], {}).setdefault(s["tier"], [])
            points.append([round(s["submitted_s"], 3), round(s["latency_s"], 3)])
        y_max = max((s["latency_s"] for s in ok), default=1.0)
        x_max = max((s["submitted_s"] for s in ok), default=1.0)
        ordered = {arm: {t: arms[arm][t] for t in TIER_COLORS if t in arms[arm]} for arm in ARM_TITLES if arm in arms}
        behaviours[behaviour] = {"arms": ordered, "y_max": y_max, "x_max": x_max}
    return {"titles": ARM_TITLES, "behaviours": behaviours}


def html_report(intro: str, results: dict[str, Any]) -> str:
    charts_js = (resources.files("gateway.http.status") / "static" / "charts.js").read_text()
    data = json.dumps(html_data(results)).replace("</", "<\\/")
    rows = "".join(
        f"<h2>Per-request latency over time ({html.escape(b)}), submit → answer</h2>"
        f'<div class="row" id="row-{html.escape(b)}"></div>'
        for b in results
    )
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Iris seed experiment</title>'
        f"<style>{_HTML_STYLE}</style></head><body><h1>Iris seed experiment: before / after</h1>"
        f"<p>{html.escape(intro)}</p>{rows}"
        f'<script type="application/json" id="seed-data">{data}</script>'
        f"<script>{charts_js}</script><script>{_HTML_SCRIPT}</script></body></html>"
    )


def redraw_plots(report: dict[str, Any], out_dir: Path) -> bool:
    """Draw each behaviour's two plots from a report (as saved in seed.json); False without matplotlib."""
    if plt is None:
        return False
    for behaviour, block in report["results"].items():
        plot_over_time(block["samples"], out_dir / f"{behaviour}-latency-over-time.png", behaviour)
        plot_cdf(block["samples"], out_dir / f"{behaviour}-latency-cdf.png", behaviour)
    return True
