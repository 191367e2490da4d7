"""`iris bench continue`: a worker `kill -9`ed under load, and the answers it was running continued.

Two workers (FakeEngine, or the tiny random-weight GGUF on llama.cpp), one broker, a real nats-server.
The same prompts run twice at temperature 0, streamed through the SDK: once undisturbed (the reference
text of each), once with worker `w1` killed while it runs leases. Counted per client: its text (the
chunks as its reader got them) equal to the reference, restarts seen (a re-run whose chunks started the
answer over), chunk indexes continuous; over the re-runs: tokens continued from stored progress (the
survivor's log) and tokens generated again (what a restarted re-run's reader had already had). Also the
progress records' cost per token (`progress_cost`: one answer streamed through `ProgressLog` against
plain chunks, on the same server) and records written per token.
"""

from __future__ import annotations

import asyncio
import json
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from iris.bench.harness import percentiles, save_report
from iris.launch.nats_server import NatsServer
from iris.launch.processes import Process, spawn, wait_for_model
from iris.sdk.client import Client
from runtime.progress import ProgressLog
from runtime.stream_ops import publish_reply
from schemas.messages import Chunk, Progress

CONTINUED_EVENT = "continuing an earlier attempt"  # the worker's log line, with `tokens` taken over


@dataclass
class Answer:
    """One streamed answer as its reader saw it."""

    text: str = ""
    indexes: list[int] = field(default_factory=list)
    restarts: int = 0  # times a re-run started the answer over (its reader threw its text away)
    had_before_restart: int = 0  # chunks the reader had when it restarted: tokens generated again
    continued: bool = False
    final: str = ""
    attempt: int = 1
    done: bool = False


async def stream_one(client: Client, model: str, prompt: str, key: str, max_tokens: int, answer: Answer) -> Answer:
    """Stream one answer into `answer` (filled as chunks come, so a fault can be timed on it)."""
    generation = client.generate(
        prompt, model=model, max_tokens=max_tokens, temperature=0, seed=0, idempotency_key=key, deadline_s=300
    )
    attempt = 1
    async for chunk in generation:
        if chunk.attempt > attempt:
            attempt = chunk.attempt
            if chunk.continued:
                answer.continued = True
            elif answer.indexes:  # the reader restarts, as the SDK tells it to
                answer.restarts += 1
                answer.had_before_restart += len(answer.indexes)
                answer.text, answer.indexes = "", []
        answer.text += chunk.text
        answer.indexes.append(chunk.index)
    assert generation.result is not None
    answer.final, answer.attempt, answer.done = generation.result.text, generation.result.attempt, True
    return answer


class Load:
    """The prompts streamed at most `in_flight` at a time; `answers` fill in as they stream."""

    def __init__(
        self, client: Client, model: str, prompts: Sequence[str], key_prefix: str, max_tokens: int, in_flight: int
    ) -> None:
        self.answers = [Answer() for _ in prompts]
        slots = asyncio.Semaphore(in_flight)

        async def one(i: int) -> Answer:
            async with slots:
                return await stream_one(client, model, prompts[i], f"{key_prefix}-{i}", max_tokens, self.answers[i])

        self._tasks = [asyncio.ensure_future(one(i)) for i in range(len(prompts))]

    def mid_way(self, answers: int, chunks: int) -> bool:
        """At least `answers` unfinished answers have `chunks` chunks each: every worker is mid-answer."""
        return sum(1 for a in self.answers if not a.done and len(a.indexes) >= chunks) >= answers

    async def finished(self) -> list[Answer]:
        return list(await asyncio.gather(*self._tasks))


async def kill_when(victim: Process, ready: Callable[[], bool], timeout_s: float = 120.0) -> None:
    """`kill -9` the worker as soon as `ready()` says it is mid-answer (polled every 5 ms)."""
    end = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > end:
            raise TimeoutError("the load never reached the point to kill the worker at")
        await asyncio.sleep(0.005)
    victim.kill()


def continued_tokens(log: str) -> tuple[int, int]:
    """(re-runs continued, tokens taken over) from a worker's log."""
    counts = []
    for line in log.splitlines():
        if CONTINUED_EVENT in line:
            try:
                counts.append(int(json.loads(line)["tokens"]))
            except (ValueError, KeyError, TypeError):
                continue  # not one of the JSON lines
    return len(counts), sum(counts)


def judge(reference: list[Answer], answers: list[Answer], max_tokens: int) -> dict[str, Any]:
    equal = sum(
        1
        for ref, got in zip(reference, answers, strict=True)
        if got.text == ref.text == got.final and got.indexes == list(range(len(got.indexes)))
    )
    reruns = [a for a in answers if a.attempt > 1]
    return {
        "clients": len(answers),
        "text_equals_uninterrupted": equal,
        "restarts_seen": sum(a.restarts for a in answers),
        "reruns": len(reruns),
        "reruns_continued": sum(1 for a in reruns if a.continued),
        "tokens_generated_again": sum(a.had_before_restart for a in answers),
        "reference_tokens_mean": round(sum(len(a.indexes) for a in reference) / max(1, len(reference)), 1),
        "max_tokens": max_tokens,
    }


async def progress_cost(nc: NATS, tokens: int, sequences: int, token_s: float = 0.0) -> dict[str, Any]:
    """Streaming `sequences` answers at once through `ProgressLog` (stored, then sent) against sending their
    chunks plain: wall µs per token (token_s = 0: the engine never waits, the worst case), records written
    per token, and how much later a chunk reaches its client (add to publish)."""
    delays_s: list[float] = []

    async def plain(i: int) -> int:
        for index in range(tokens):
            await publish_reply(nc, f"_INBOX.cost.{i}", f"plain{i}", Chunk(index, "word "), owner=None)
            await asyncio.sleep(token_s)
        return 0

    async def logged(i: int) -> int:
        added_s: list[float] = []

        async def deliver(index: int, text: str) -> None:
            delays_s.append(time.perf_counter() - added_s[index])
            await publish_reply(nc, f"_INBOX.cost.{i}", f"cost{i}", Chunk(index, text), owner=None)

        log = ProgressLog(nc, f"cost{i}-{time.monotonic_ns()}", None, Progress(1, "cost", [], []), deliver)
        for index in range(tokens):
            added_s.append(time.perf_counter())
            log.add("word ", (index,))
            await asyncio.sleep(token_s)  # the engine yields to the loop between tokens
        await log.close()
        return log.records

    result: dict[str, Any] = {"tokens": tokens, "sequences": sequences, "token_ms": token_s * 1000}
    for name, run in (("plain", plain), ("progress", logged)):
        start = time.perf_counter()
        records = await asyncio.gather(*(run(i) for i in range(sequences)))
        result[f"{name}_us_per_token"] = round((time.perf_counter() - start) / (tokens * sequences) * 1e6, 2)
    result["records_per_token"] = round(sum(records) / (tokens * sequences), 3)
    result["extra_us_per_token"] = round(result["progress_us_per_token"] - result["plain_us_per_token"], 2)
    result["chunk_delay"] = percentiles(delays_s)
    return result


def _worker_args(engine: str, model_path: str, slots: int, fake_tps: float) -> tuple[list[str], str]:
    if engine == "fake":
        return ["--engine", "fake", "--model-name", "fake", "--fake-tps", str(fake_tps), "--slots", str(slots)], "fake"
    return ["--model", model_path, "--model-name", "tiny", "--slots", str(slots), "--threads", "1"], "tiny"


async def run_continue_bench(
    engine: str, n: int, max_tokens: int, in_flight: int, slots: int, fake_tps: float, out: Path
) -> dict[str, Any]:
    report: dict[str, Any] = {"bench": "continue", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    report["machine"] = {"platform": platform.platform()}
    report["setup"] = {"engine": engine, "requests": n, "max_tokens": max_tokens, "in_flight": in_flight}
    with tempfile.TemporaryDirectory(prefix="iris-continue-") as tmp:
        workdir = Path(tmp)
        model_path = ""
        if engine == "llama":
            from iris.bench.random_gguf import TINY, write_llama_gguf

            model_path = str(write_llama_gguf(workdir / "tiny.gguf", TINY))
        args, model = _worker_args(engine, model_path, slots, fake_tps)
        server = NatsServer(workdir / "nats").start()
        broker = spawn("broker", server.url, ["--worker-timeout", "1"], workdir / "broker.log")
        workers = [
            spawn("gpu_worker", server.url, [*args, "--worker-id", f"w{i}"], workdir / f"w{i}.log") for i in (1, 2)
        ]
        try:
            async with await Client.connect(server.url) as client:
                await wait_for_model(client, model, [broker, *workers])
                prompts = [f"request {i}: tell the story of ship {i}" for i in range(n)]
                reference = await Load(client, model, prompts, "ref", max_tokens, in_flight).finished()
                load = Load(client, model, prompts, "kill", max_tokens, in_flight)
                mid_way = min(in_flight, 2 * slots) - slots // 2  # of the answers running: some are on w1
                await kill_when(workers[0], lambda: load.mid_way(mid_way, max_tokens // 2))
                answers = await load.finished()
                report["result"] = judge(reference, answers, max_tokens)
                runs, taken_over = continued_tokens((workdir / "w2.log").read_text())
                report["result"].update(continued_runs_logged=runs, tokens_continued=taken_over)
                costs = [(1, 0.0), (32, 0.0), (32, 0.02)]  # the engine never waiting; 50 tokens/s a sequence
                report["progress_cost"] = [await progress_cost(client.nc, 64, k, token_s) for k, token_s in costs]
        finally:
            for proc in [broker, *workers]:
                proc.kill()
                proc.wait()
            server.stop()
    print(json.dumps(report, indent=2))
    return save_report(report, out)
