"""`iris bench …`: the benchmark programs; each prints its figures and saves JSON."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click

from iris.commands.options import choice_option, gguf_path, ints_option, llama_options, out_option


@click.group()
def bench() -> None:
    """Benchmarks: print figures and save JSON."""


@bench.command("overhead")
@click.option("--requests", "n_requests", type=int, default=1000, show_default=True)
@click.option(
    "--real-requests", type=int, default=100, show_default=True, help="Requests for the real-model TTFT part."
)
@out_option("overhead")
@click.option("--skip-real", is_flag=True, help="Only the FakeEngine part.")
def bench_overhead(n_requests: int, real_requests: int, out: Path, skip_real: bool) -> None:
    """Latency Iris adds over calling the same engine in-process (FakeEngine, and TTFT on the real model)."""
    from iris.bench.overhead import run_overhead_bench

    asyncio.run(run_overhead_bench(n_requests, 0 if skip_real else real_requests, out))


@bench.command("gateway")
@click.option("--requests", "n_latency", type=int, default=1000, show_default=True, help="Requests per latency arm.")
@click.option("--clients", type=int, default=200, show_default=True, help="Concurrent HTTP clients.")
@click.option("--seconds", type=float, default=15.0, show_default=True, help="Length of the throughput part.")
@click.option("--workers", type=int, default=1, show_default=True, help="FakeEngine worker processes.")
@click.option("--slots", type=int, default=256, show_default=True, help="Slots per worker.")
@click.option(
    "--status-viewers",
    type=int,
    default=0,
    show_default=True,
    help="Also measure the status page's cost: throughput with N /status/events readers vs none (ABBA).",
)
@out_option("gateway")
def bench_gateway(
    n_latency: int, clients: int, seconds: float, workers: int, slots: int, status_viewers: int, out: Path
) -> None:
    """HTTP latency added over NATS (p50/p99) and sustained requests/s at N concurrent clients."""
    from iris.bench.gateway import run_gateway_bench

    asyncio.run(run_gateway_bench(n_latency, clients, seconds, workers, slots, out, status_viewers))


@bench.command("upstream")
@click.option("--clients", type=int, default=50, show_default=True, help="Concurrent requests (= HttpEngine slots).")
@click.option("--requests", "n_requests", type=int, default=5000, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench-results"), show_default=True)
def bench_upstream(clients: int, n_requests: int, out: Path) -> None:
    """HttpEngine in front of an OpenAI-compatible server: requests/s and upstream TCP connections."""
    from iris.bench.upstream import run_upstream_bench

    asyncio.run(run_upstream_bench(clients, n_requests, out))


@bench.command("seed")
@click.option("--prompts", "per_user", type=int, default=25, show_default=True, help="Prompts per user.")
@click.option("--max-tokens", type=int, default=64, show_default=True)
@click.option("--behaviour", type=click.Choice(["closed", "burst", "both"]), default="both", show_default=True)
@click.option("--engine", type=click.Choice(["llama", "fake"]), default="llama", show_default=True)
@click.option("--model", help="GGUF file (default: the embedded Gemma 3 270M), e.g. Mistral 7B Instruct.")
@click.option("--n-gpu-layers", type=int, default=0, show_default=True, help="-1 offloads every layer to the GPU.")
@click.option("--fake-tps", type=float, default=50.0, show_default=True, help="FakeEngine tokens/s (engine fake).")
@click.option("--repeats", type=int, default=1, show_default=True, help="Runs of each arm (alternating order).")
@choice_option(
    "--labels",
    ["reference", "one-workload"],
    "reference",
    "reference: a workload per tier (paid, open-source) with its priority, no weights; one-workload: default.",
)
@choice_option(
    "--mode",
    ["requests", "admission"],
    "requests",
    "requests: prompts run by Iris's worker; admission: tickets from iris.admit, the app calls its own model.",
)
@click.option("--priority-mode", type=click.Choice(["share", "strict"]), default="share", show_default=True)
@click.option("--model-call-s", type=float, default=0.3, show_default=True, help="Admission mode: one model call.")
@choice_option(
    "--preemption",
    ["off", "on", "both"],
    "off",
    "The Iris arm without priority preemption, with it (arm iris-preempt), or both arms side by side.",
)
@click.option("--preempt-ratio", type=float, default=2.0, show_default=True, help="The preemption arm's broker ratio.")
@choice_option(
    "--answers",
    ["fixed", "natural"],
    "fixed",
    "fixed: every answer max-tokens long (min_tokens), the same work in every arm; natural: the model ends it.",
)
@click.option(
    "--prompt-file",
    type=click.Path(exists=True, dir_okay=False),
    help="Your own prompts: a JSON list of strings (.json) or one prompt a line; default: the shipped set.",
)
@click.option("--out-dir", type=click.Path(path_type=Path), default=Path("bench-results/seed"), show_default=True)
def bench_seed(
    per_user: int, max_tokens: int, behaviour: str, engine: str, model: str | None, n_gpu_layers: int,
    fake_tps: float, repeats: int, labels: str, mode: str, priority_mode: str, model_call_s: float,
    preemption: str, preempt_ratio: float, answers: str, prompt_file: str | None, out_dir: Path,
) -> None:  # fmt: skip
    """The reference experiment: 5 paid + 5 open-source users, FIFO vs Iris vs paid alone; report and plots."""
    from iris.bench.seed.run import SeedOptions, run_seed_bench

    if engine == "fake":
        worker_args, name = ["--engine", "fake", "--model-name", "fake", "--fake-tps", str(fake_tps)], "fake"
    elif model:
        name = Path(model).stem.replace(".", "-")[:60]
        worker_args = ["--model", model, "--model-name", name, "--n-gpu-layers", str(n_gpu_layers)]
    else:
        from gpu_worker.embedded_model import EMBEDDED_MODEL_NAME

        worker_args, name = ["--n-gpu-layers", str(n_gpu_layers)], EMBEDDED_MODEL_NAME
    behaviours = ["closed", "burst"] if behaviour == "both" else [behaviour]
    options = SeedOptions(
        labels, mode, priority_mode, model_call_s, prompt_file or "", preemption, preempt_ratio, answers=answers
    )
    try:
        options.arms()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    asyncio.run(run_seed_bench(behaviours, per_user, max_tokens, worker_args, name, out_dir, repeats, options))


@bench.command("continue")
@click.option(
    "--engine",
    type=click.Choice(["fake", "llama"]),
    default="fake",
    show_default=True,
    help="FakeEngine workers, or llama.cpp on the tiny random-weight GGUF (written on the fly).",
)
@click.option("--requests", "n", type=int, default=200, show_default=True)
@click.option("--max-tokens", type=int, default=64, show_default=True)
@click.option("--in-flight", type=int, default=32, show_default=True, help="Requests streaming at once.")
@click.option("--slots", type=int, default=8, show_default=True, help="Slots per worker (two workers).")
@click.option("--fake-tps", type=float, default=100.0, show_default=True, help="FakeEngine tokens/s per sequence.")
@out_option("continue")
def bench_continue(
    engine: str, n: int, max_tokens: int, in_flight: int, slots: int, fake_tps: float, out: Path
) -> None:  # fmt: skip
    """kill -9 of a worker under load: texts equal to an undisturbed run, restarts seen, tokens continued."""
    from iris.bench.continuation import run_continue_bench

    asyncio.run(run_continue_bench(engine, n, max_tokens, in_flight, slots, fake_tps, out))


@bench.command("retry")
@click.option("--requests", "n", type=int, default=1000, show_default=True, help="Requests, then as many retries.")
@out_option("retry")
def bench_retry(n: int, out: Path) -> None:
    """Retry of a finished request (same idempotency key): the stored answer's latency; and the store's cost."""
    from iris.bench.retry import run_retry_bench

    asyncio.run(run_retry_bench(n, out))


@bench.command("fairness")
@click.option(
    "--duration", "duration_s", type=float, default=20.0, show_default=True, help="Seconds of saturating load."
)
@click.option("--outstanding", type=int, default=4, show_default=True, help="Closed loops per user (greedy: 10x).")
@click.option("--slots", type=int, default=2, show_default=True, help="FakeEngine worker slots.")
@click.option("--policy", type=click.Choice(["wfq", "fifo"]), default="wfq", show_default=True)
@click.option(
    "--scenario",
    type=click.Choice(["weights", "priorities", "both"]),
    default="both",
    show_default=True,
    help="weights: workloads weighted 1:2:4; priorities: workloads at priorities 1/2/4, no weights.",
)
@out_option("fairness")
def bench_fairness(duration_s: float, outstanding: int, slots: int, policy: str, scenario: str, out: Path) -> None:
    """Token share per flow vs its target under saturation (weights 1:2:4, or priorities 1/2/4; a greedy user)."""
    from iris.bench.fairness import SCENARIOS, run_fairness_bench

    names = tuple(SCENARIOS) if scenario == "both" else (scenario,)
    asyncio.run(run_fairness_bench(duration_s, outstanding, slots, out, policy, names))


@bench.command("scheduler")
@click.option("--requests", "n_dispatch", type=int, default=10_000, show_default=True, help="Requests to dispatch.")
@click.option("--waiting", "n_waiting", type=int, default=100_000, show_default=True, help="Requests left waiting.")
@click.option("--preemption", type=click.Choice(["off", "on", "both"]), default="off", show_default=True)
@out_option("scheduler")
def bench_scheduler(n_dispatch: int, n_waiting: int, out: Path, preemption: str) -> None:
    """Dispatch decisions per second and broker memory with a deep backlog, vs raw JetStream."""
    from iris.bench.scheduler import run_scheduler_bench

    asyncio.run(run_scheduler_bench(n_dispatch, n_waiting, out, preemption))


@bench.command("scale")
@ints_option("--fleets", "1000,10000", "Simulated fleet sizes, comma-separated.")
@click.option("--slots", type=int, default=8, show_default=True, help="Slots per simulated worker.")
@click.option("--single-slots", type=int, default=64, show_default=True, help="Slots of the single worker.")
@click.option("--backlog", type=int, default=20_000, show_default=True, help="Requests waiting per phase.")
@click.option("--waiting", type=int, default=100_000, show_default=True, help="Waiting with the largest fleet (RSS).")
@click.option("--idle", "idle_s", type=float, default=5.0, show_default=True, help="Seconds of idle heartbeats.")
@click.option("--takeover/--no-takeover", default=False, show_default=True, help="Measure a takeover at depth instead.")
@click.option("--core/--no-core", default=False, show_default=True, help="The pure scheduler only (no NATS).")
@click.option("--takeover-workers", type=int, default=100, show_default=True, help="Fleet size for --takeover.")
@click.option(
    "--read-ahead/--no-read-ahead",
    default=True,
    show_default=True,
    help="--takeover: the standby reads ahead, or replays.",
)
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench-results/scale.json"), show_default=True)
def bench_scale(
    fleets: list[int],
    slots: int,
    single_slots: int,
    backlog: int,
    waiting: int,
    idle_s: float,
    takeover: bool,
    core: bool,
    takeover_workers: int,
    read_ahead: bool,
    out: Path,
) -> None:
    """Dispatch rate, broker CPU per request and RSS with 1 vs 1,000 vs 10,000 workers; or a takeover at depth."""
    from iris.bench.scale import run_core_bench, run_scale_bench, run_takeover_bench

    if takeover:
        asyncio.run(run_takeover_bench(waiting, takeover_workers, slots, read_ahead, out))
    elif core:
        run_core_bench(fleets, slots, single_slots, backlog, out)
    else:
        asyncio.run(run_scale_bench(fleets, slots, single_slots, backlog, waiting, idle_s, out))


@bench.command("hostile")
@click.option("--requests", "n_requests", type=int, default=100_000, show_default=True, help="Requests to send.")
@click.option("--served-every", type=int, default=10, show_default=True, help="Every K-th to `fake` (0: none).")
@click.option("--rounds", type=int, default=2, show_default=True, help="Rounds of --requests each.")
@out_option("hostile")
def bench_hostile(n_requests: int, served_every: int, rounds: int, out: Path) -> None:
    """Broker RSS and /metrics size before and after requests to random model/workload names."""
    from iris.bench.hostile import run_hostile_bench

    asyncio.run(run_hostile_bench(n_requests, served_every, rounds, out))


@bench.command("failover")
@click.option("--rounds", type=int, default=3, show_default=True, help="Leaders killed, one after the other.")
@out_option("failover")
def bench_failover(rounds: int, out: Path) -> None:
    """kill -9 of the leading broker under load: seconds until the standby leads and serves again."""
    from iris.bench.failover import run_failover_bench

    asyncio.run(run_failover_bench(rounds, out))


@bench.command("soak")
@click.option("--duration", "duration_s", type=float, default=300.0, show_default=True, help="Seconds of overload.")
@click.option("--slots", type=int, default=4, show_default=True, help="Slots of the FakeEngine worker.")
@click.option("--fake-tps", type=float, default=200.0, show_default=True, help="Tokens/s per FakeEngine sequence.")
@out_option("soak")
def bench_soak(duration_s: float, slots: int, fake_tps: float, out: Path) -> None:
    """2x capacity through the HTTP gateway: bounded queues, 429 + Retry-After, RSS, fairness under overload."""
    from iris.bench.soak import run_soak_bench

    asyncio.run(run_soak_bench(duration_s, slots, fake_tps, out))


@bench.command("limits")
@click.option("--waiting", "n_waiting", type=int, default=20_000, show_default=True, help="Requests queued.")
@click.option("--decisions", type=int, default=5_000, show_default=True, help="Dispatch decisions timed.")
@click.option("--round-trips", type=int, default=500, show_default=True, help="Sequential admissions timed.")
@click.option("--apps", type=int, default=32, show_default=True, help="Concurrent apps for tickets/s.")
@out_option("limits")
def bench_limits(n_waiting: int, decisions: int, round_trips: int, apps: int, out: Path) -> None:
    """Dispatch cost of limit_by with a deep backlog, and admission ticket latency and rate."""
    from iris.bench.limits import run_limits_bench

    asyncio.run(run_limits_bench(n_waiting, decisions, round_trips, apps, out))


@bench.command("worker")
@llama_options("1,2,4,8", "Sequences at once, comma-separated.", rounds=3)
@click.option("--flash-attn", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True)
@out_option("worker")
def bench_worker(model: str | None, concurrency: list[int], out: Path, **options: Any) -> None:
    """Tokens/s with N concurrent sequences: Iris (broker + one N-slot worker) vs raw batched llama_decode."""
    from iris.bench.worker import bench_command

    asyncio.run(bench_command(gguf_path(model), concurrency, out, **options))


@bench.command("suspend")
@click.option("--model", help="GGUF file (default: a random-weight F16 tiny Mistral-shaped model).")
@ints_option("--contexts", "1024,4096", "Prompt lengths in tokens, comma-separated.")
@click.option("--n-gpu-layers", type=int, default=0, show_default=True, help="-1 offloads every layer to the GPU.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench-results/suspend.json"), show_default=True)
def bench_suspend(model: str | None, contexts: list[int], n_gpu_layers: int, out: Path) -> None:
    """Suspend/resume cost per mode (cells kept, state restored, re-prefilled) at each context length."""
    from iris.bench.suspend import main

    main(model, contexts, n_gpu_layers, out)


@bench.command("make-model")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--shape", type=click.Choice(["mistral-7b", "tiny"]), default="mistral-7b", show_default=True)
def bench_make_model(out: Path, shape: str) -> None:
    """Write a random-weight GGUF shaped like Mistral 7B (F16, ~14.5 GB) for `iris bench worker --model`."""
    from iris.bench.random_gguf import SHAPES, write_llama_gguf

    click.echo(f"wrote {write_llama_gguf(out, SHAPES[shape])}")


@bench.command("llama-server")
@llama_options("1,8,32", "Requests at once (= Iris slots).", rounds=2)
@click.option("--flash-attn/--no-flash-attn", default=False, show_default=True, help="Both arms.")
@click.option("--ttft-requests", type=int, default=10, show_default=True, help="Requests for time to first token.")
@out_option("llama-server")
def bench_llama_server(model: str | None, concurrency: list[int], out: Path, **options: Any) -> None:
    """Tokens/s at N concurrent requests and time to first token: Iris vs `python -m llama_cpp.server`."""
    from iris.bench.llama_server import ServerBenchSettings, run_llama_server_bench

    asyncio.run(run_llama_server_bench(ServerBenchSettings(gguf_path(model), concurrency, **options), out))


@bench.command("overload")
@click.option("--engine", type=click.Choice(["fake", "llama"]), default="fake", show_default=True)
@click.option("--model", help="llama: a GGUF file (default: the embedded Gemma 3 270M).")
@click.option("--load", type=float, default=2.0, show_default=True, help="Offered load ÷ measured capacity.")
@click.option("--high-share", type=float, default=0.25, show_default=True, help="High priority's part of the load.")
@click.option("--high-requests", type=int, default=100, show_default=True, help="High arrivals per phase.")
@click.option("--max-tokens", type=int, default=64, show_default=True)
@click.option("--fake-tps", type=float, default=64.0, show_default=True, help="FakeEngine tokens/s per sequence.")
@click.option("--deadline", "deadline_s", type=float, default=30.0, show_default=True, help="Every request's.")
@click.option("--preempt-ratio", type=float, default=2.0, show_default=True, help="Phase on: the broker's ratio.")
@click.option("--preempt-min-run", "preempt_min_run_s", type=float, default=0.05, show_default=True)
@click.option("--preempt-max-per-request", type=int, default=3, show_default=True)
@click.option("--priority-mode", type=click.Choice(["share", "strict"]), default="share", show_default=True)
@out_option("overload")
def bench_overload(out: Path, **options: Any) -> None:
    """2x capacity in two priorities, open loop: high's p99 queue wait vs unloaded, preemption off vs on."""
    from iris.bench.overload.run import OverloadOptions, main

    main(OverloadOptions(**options), out)
