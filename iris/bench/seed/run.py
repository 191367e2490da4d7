"""`iris bench seed`: the reference experiment (Aperture's Mistral test) re-run on Iris.

10 users share one model behind `max_concurrency = 2`: 5 "paid" (priority 5) and 5 "open-source"
(priority 1), N prompts each from a fixed, varied set shipped with Iris (`iris/bench/seed/prompts.json`).
Labels (`--labels`): `reference` (default) labels requests as the reference does, a workload per tier
(`paid`, `open-source`) with its priority and no configured weights; `one-workload` puts all ten users in
workload `default`. Mode (`--mode`): `requests` sends prompts through Iris to its worker; `admission`
is the reference's own pattern, each call asks `iris.admit.<model>` for a ticket with those labels,
calls the model itself (a model server taking `--model-call-s` per call) and releases the ticket.
Three arms on the same model and prompts, each on a fresh stack (nats-server, broker, one 2-slot worker):
  * `fifo`        — `--policy fifo`, all 10 users: what a plain queue gives;
  * `iris`        — weighted-fair queuing, all 10 users;
  * `paid-alone`  — only the 5 paid users: the ideal a prioritizing scheduler can approach;
  * `iris-preempt` — the `iris` arm with priority preemption on (`--preemption on|both`): a paid request
    that finds both slots busy suspends an open-source answer (`--preempt-ratio`), which resumes after.
Users behave `closed` (next prompt when the last answer arrives) or `burst` (all prompts at once).
Aperture's queue timeout (120 s) and max in-flight (60 s) map to the request deadline (queue timeout +
max in-flight = 180 s: a request must be answered within that, or it gets a typed deadline error) and the
broker's `max_inflight_s = 60`. Sampling is greedy. Answers (`--answers`) are `fixed` by default: every
one exactly `max_tokens` long (`min_tokens` = `max_tokens`), so every arm does the same work. Greedy alone
does not give that: a batch's numerics depend on what shares it, and a near-tie that flips decides whether
an answer ends after 12 tokens or runs to 128 (5-8 of 100 answers differed between arms here, 10-17% of
the tokens). `natural` lets each answer end where the model ends it.
Writes `report.md`, `seed.json` and PNG plots under the output directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from iris.bench.seed.figures import ARMS, MAX_INFLIGHT_S, QUEUE_TIMEOUT_S, TIERS, Sample, summarize, verdict
from iris.launch.nats_server import NatsServer
from iris.launch.processes import spawn, stop_all, wait_for_model
from iris.sdk.client import Client
from schemas.errors import IrisError, NoCapacity

USERS_PER_TIER = 5
MAX_CONCURRENCY = 2
IRIS_ARMS = ("iris", "iris-preempt")
PREEMPTION = ("off", "on", "both")
PREEMPT_MIN_RUN_S = 0.5
LABELS = ("reference", "one-workload")
MODES = ("requests", "admission")
ADMISSION_MODEL = "seed-app"


@dataclass(frozen=True)
class SeedOptions:
    labels: str = "reference"  # a workload per tier (the reference's labels), or "one-workload"
    mode: str = "requests"  # or "admission": tickets from Iris, the model called by the app
    priority_mode: str = "share"  # the broker's `priority_mode` in the Iris arm
    model_call_s: float = 0.3  # admission mode: one call to the app's own model server
    prompt_file: str = ""  # prompts of one's own (JSON list of strings, or one per line); "" = the shipped set
    preemption: str = "off"  # the Iris arm without preemption, with it, or both arms
    preempt_ratio: float = 2.0  # the broker's `preempt_ratio` in the preemption arm
    answers: str = "fixed"  # every answer `max_tokens` long, or "natural": where the model ends it

    def arms(self) -> tuple[str, ...]:
        if self.preemption != "off" and self.mode == "admission":
            raise ValueError("preemption suspends worker leases; admission mode has none (tickets)")
        iris = {"off": ("iris",), "on": ("iris-preempt",), "both": IRIS_ARMS}[self.preemption]
        return tuple(arm for arm in ARMS if arm in ("fifo", "paid-alone") or arm in iris)

    def workload(self, tier: str) -> str:
        return tier if self.labels == "reference" else "default"


@dataclass(frozen=True)
class User:
    name: str
    tier: str
    priority: int
    prompts: tuple[str, ...]


def seed_prompts(prompt_file: str = "") -> list[str]:
    """The shipped prompt set, or `prompt_file`'s: a JSON list of strings (`.json`), else one prompt a line."""
    if not prompt_file:
        return list(json.loads(resources.files("iris.bench.seed").joinpath("prompts.json").read_text()))
    text = Path(prompt_file).read_text()
    prompts = json.loads(text) if prompt_file.endswith(".json") else [line.strip() for line in text.splitlines()]
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"{prompt_file}: a JSON prompt file holds a list of strings")
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise ValueError(f"{prompt_file}: no prompts in it")
    return prompts


def make_users(per_user: int, prompts: list[str]) -> list[User]:
    users = []
    for t, (tier, priority) in enumerate(TIERS):
        for i in range(USERS_PER_TIER):
            start = (t * USERS_PER_TIER + i) * per_user
            mine = tuple(prompts[(start + k) % len(prompts)] for k in range(per_user))
            users.append(User(f"{tier}-{i + 1}", tier, priority, mine))
    return users


class ModelServer:
    """The app's own model server in admission mode. A call takes `call_s` on average, between half and
    one and a half times that by prompt (answers differ in length; the same prompt takes the same time in
    every arm); it counts how many calls run at once, so an over-admitting scheduler shows in the report."""

    def __init__(self, call_s: float) -> None:
        self.call_s = call_s
        self.running = 0
        self.most_at_once = 0

    def duration_s(self, prompt: str) -> float:
        return self.call_s * (0.5 + random.Random(prompt).random())

    async def call(self, prompt: str) -> None:
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await asyncio.sleep(self.duration_s(prompt))
        finally:
            self.running -= 1


@dataclass
class Run:
    """One arm's drive: who asks, with which labels, through which path."""

    client: Client
    arm: str
    model: str
    max_tokens: int
    options: SeedOptions
    server: ModelServer | None = None  # admission mode
    t0: float = field(default_factory=time.monotonic)

    async def one(self, user: User, index: int) -> Sample:
        submitted = time.monotonic()
        tokens, outcome = 0, "ok"
        try:
            tokens = await (self._admitted(user, index) if self.server else self._requested(user, index))
        except IrisError as exc:
            outcome = exc.code.value
        latency = time.monotonic() - submitted
        return Sample(self.arm, user.tier, user.name, index, submitted - self.t0, latency, tokens, outcome)

    async def _requested(self, user: User, index: int) -> int:
        result = await self.client.complete(
            messages=[{"role": "user", "content": user.prompts[index]}],
            model=self.model,
            workload=self.options.workload(user.tier),
            priority=user.priority,
            user=user.name,
            deadline_s=QUEUE_TIMEOUT_S + MAX_INFLIGHT_S,
            max_tokens=self.max_tokens,
            min_tokens=self.max_tokens if self.options.answers == "fixed" else 0,
            temperature=0.0,
            seed=1,
        )
        return result.usage.completion_tokens

    async def _admitted(self, user: User, index: int) -> int:
        assert self.server is not None
        admission = self.client.admit(
            model=self.model,
            workload=self.options.workload(user.tier),
            priority=user.priority,
            user=user.name,
            deadline_s=QUEUE_TIMEOUT_S,
        )
        async with admission:
            await self.server.call(user.prompts[index])
        return 0


async def _drive(run: Run, users: list[User], behaviour: str) -> list[Sample]:
    if behaviour == "burst":
        # Round-robin over users, so submission order favours no tier (FIFO would serve the first in first).
        rounds = max(len(u.prompts) for u in users)
        return list(await asyncio.gather(*(run.one(u, i) for i in range(rounds) for u in _alternate(users))))

    async def closed_loop(user: User) -> list[Sample]:
        return [await run.one(user, i) for i in range(len(user.prompts))]

    per_user = await asyncio.gather(*(closed_loop(u) for u in users))
    return [s for samples in per_user for s in samples]


def _alternate(users: list[User]) -> list[User]:
    """paid-1, open-source-1, paid-2, open-source-2, …"""
    tiers = [[u for u in users if u.tier == tier] for tier, _ in TIERS]
    return [u for group in zip(*tiers, strict=False) for u in group] or users


async def run_arm(
    arm: str,
    users: list[User],
    behaviour: str,
    worker_args: list[str],
    model: str,
    max_tokens: int,
    options: SeedOptions = SeedOptions(),
) -> list[Sample]:
    policy = "fifo" if arm == "fifo" else "wfq"
    admission = options.mode == "admission"
    preempt = ["--preempt-ratio", str(options.preempt_ratio), "--preempt-min-run", str(PREEMPT_MIN_RUN_S)]
    with tempfile.TemporaryDirectory(prefix=f"iris-seed-{arm}-") as tmp:
        workdir = Path(tmp)
        server = NatsServer(workdir / "nats").start()
        broker_args = ["--policy", policy, "--max-concurrency", str(MAX_CONCURRENCY)]
        broker_args += ["--max-inflight", str(MAX_INFLIGHT_S), "--priority-mode", options.priority_mode]
        broker_args += preempt if arm == "iris-preempt" else []
        procs = [spawn("broker", server.url, broker_args, workdir / "broker.log")]
        if not admission:
            worker = ["--slots", str(MAX_CONCURRENCY), *worker_args]
            procs.append(spawn("gpu_worker", server.url, worker, workdir / "worker.log"))
        try:
            async with await Client.connect(server.url) as client:
                if admission:
                    await _wait_for_admission(client)
                    run = Run(client, arm, ADMISSION_MODEL, max_tokens, options, ModelServer(options.model_call_s))
                else:
                    await wait_for_model(client, model, procs)
                    # One answer before the clock starts: the broker's start-up grace is over, the model warm.
                    await client.complete("warm up", model=model, workload="warm-up", max_tokens=1, deadline_s=300)
                    run = Run(client, arm, model, max_tokens, options)
                arm_users = [u for u in users if u.tier == "paid"] if arm == "paid-alone" else users
                samples = await _drive(run, arm_users, behaviour)
                if run.server is not None and run.server.most_at_once > MAX_CONCURRENCY:
                    raise RuntimeError(f"{run.server.most_at_once} model calls ran at once under max concurrency 2")
                return samples
        finally:
            stop_all(procs, server)


async def _wait_for_admission(client: Client, timeout_s: float = 60.0) -> None:
    """The broker leads and grants tickets: one admitted and released before the clock starts."""
    give_up = time.monotonic() + timeout_s
    while True:
        try:
            async with client.admit(model=ADMISSION_MODEL, workload="warm-up", deadline_s=timeout_s):
                return
        except NoCapacity:  # no broker answers yet: it is still starting
            if time.monotonic() > give_up:
                raise


def arm_order(repeat: int, arms: tuple[str, ...] = ARMS) -> tuple[str, ...]:
    """Every other repeat runs the arms in reverse, so a drift of the machine's speed during the bench
    (other load, thermal) does not favour whichever arm runs first."""
    return arms if repeat % 2 == 0 else arms[::-1]


async def run_seed_bench(
    behaviours: list[str],
    per_user: int,
    max_tokens: int,
    worker_args: list[str],
    model: str,
    out_dir: Path,
    repeats: int = 1,
    options: SeedOptions = SeedOptions(),
) -> dict[str, Any]:
    from iris.bench.seed.report import write_report

    users = make_users(per_user, seed_prompts(options.prompt_file))
    results: dict[str, Any] = {}
    for behaviour in behaviours:
        samples: list[Sample] = []
        for repeat in range(repeats):
            for arm in arm_order(repeat, options.arms()):
                print(f"seed: {behaviour} / {arm} (run {repeat + 1} of {repeats}) ...", flush=True)
                arm_samples = await run_arm(arm, users, behaviour, worker_args, model, max_tokens, options)
                samples += [replace(s, run=repeat) for s in arm_samples]
        summary = summarize(samples)
        verdicts = {arm: verdict(summary, samples, options.priority_mode, arm) for arm in IRIS_ARMS if arm in summary}
        results[behaviour] = {
            "summary": summary,
            "verdict": next(iter(verdicts.values())),  # the Iris arm without preemption when it ran
            "verdicts": verdicts,
            "samples": [asdict(s) for s in samples],
        }
    return write_report(_setup(per_user, max_tokens, worker_args, model, repeats, options), results, out_dir)


def _setup(
    per_user: int, max_tokens: int, worker_args: list[str], model: str, repeats: int, options: SeedOptions
) -> dict[str, Any]:
    """The report's setup block: what the arms ran with."""
    return {
        "users": {tier: USERS_PER_TIER for tier, _ in TIERS},
        "priorities": dict(TIERS),
        "labels": options.labels,
        "workloads": {tier: options.workload(tier) for tier, _ in TIERS},
        "mode": options.mode,
        "priority_mode": options.priority_mode,
        "preemption": options.preemption,
        "preempt_ratio": options.preempt_ratio if options.preemption != "off" else None,
        "answers": options.answers,
        "model_call_s": options.model_call_s if options.mode == "admission" else None,
        "prompts_per_user": per_user,
        "prompt_file": options.prompt_file or "shipped (iris/bench/seed/prompts.json)",
        "max_tokens": max_tokens,
        "max_concurrency": MAX_CONCURRENCY,
        "queue_timeout_s": QUEUE_TIMEOUT_S,
        "max_inflight_s": MAX_INFLIGHT_S,
        "model": ADMISSION_MODEL if options.mode == "admission" else model,
        "repeats": repeats,
        "worker_args": worker_args,
        # Worker settings given by environment (e.g. IRIS_WORKER_KV_UNIFIED) change the engine, so they go
        # into the report too.
        "worker_env": {k: v for k, v in os.environ.items() if k.startswith("IRIS_WORKER_")},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
