"""One phase: a fresh stack (nats-server, broker, one worker), the client driving it open loop, and a tap on
the wire that counts finals per request and keeps the worker's latest heartbeat."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from iris.bench.overload.plan import MAX_CONCURRENCY, TIERS, Arrival, OverloadOptions, Sample
from iris.bench.overload.report import summarize
from iris.launch.nats_server import NatsServer
from iris.launch.processes import Process, spawn, stop_all, wait_for_model
from iris.sdk.client import Client
from schemas import headers as h
from schemas.errors import IrisError
from schemas.messages import Heartbeat, heartbeat_decoder
from schemas.reply_subjects import INBOX_PREFIX
from schemas.subjects import HEARTBEAT_FILTER


def _prompt(prompts: list[str], arrival: Arrival) -> str:
    """High asks the even prompts, low the odd ones: the same prompt per arrival in every phase."""
    return prompts[(2 * arrival.index + (arrival.tier == "low")) % len(prompts)]


class WireTap:
    """What the phase's wire shows beside the client's view: finals (result or error replies) per request
    id on every inbox, and each worker's latest heartbeat (its suspensions and resumes)."""

    def __init__(self) -> None:
        self.finals: Counter[str] = Counter()
        self.beats: dict[str, Heartbeat] = {}
        self._final_seen = asyncio.Event()
        self._beat_seen = asyncio.Event()

    async def start(self, client: Client) -> None:
        await client.nc.subscribe(f"{INBOX_PREFIX}>", cb=self._on_reply)
        await client.nc.subscribe(HEARTBEAT_FILTER, cb=self._on_beat)
        await client.nc.flush()

    async def _on_reply(self, msg: Any) -> None:
        headers = msg.headers or {}
        if headers.get(h.KIND) in (h.KIND_RESULT, h.KIND_ERROR):
            self.finals[headers.get(h.REQUEST_ID, "")] += 1
            self._final_seen.set()

    async def _on_beat(self, msg: Any) -> None:
        beat = heartbeat_decoder.decode(msg.data)
        self.beats[beat.worker_id] = beat
        self._beat_seen.set()

    async def settled(self, request_ids: list[str], timeout_s: float = 10.0) -> None:
        """Until every request's final was seen here too (the tap reads them beside the SDK)."""
        give_up = time.monotonic() + timeout_s
        while any(self.finals[r] == 0 for r in request_ids) and (left_s := give_up - time.monotonic()) > 0:
            self._final_seen.clear()
            try:
                await asyncio.wait_for(self._final_seen.wait(), left_s)
            except TimeoutError:
                return

    async def fresh_beat(self, timeout_s: float = 10.0) -> None:
        """Until a heartbeat sent from now on came: its counts include the phase's last resumes."""
        since_ms = time.time() * 1000
        give_up = time.monotonic() + timeout_s
        while all(b.sent_ms < since_ms for b in self.beats.values()) and (left_s := give_up - time.monotonic()) > 0:
            self._beat_seen.clear()
            try:
                await asyncio.wait_for(self._beat_seen.wait(), left_s)
            except TimeoutError:
                return

    def suspensions(self) -> dict[str, Any]:
        beats = list(self.beats.values())
        resumes: Counter[str] = Counter()
        for beat in beats:
            resumes.update(beat.resumes)
        return {
            "suspensions": sum(b.suspensions for b in beats),
            "resumes": dict(resumes),
            "resume_ms_mean": round(max((b.resume_ms for b in beats), default=0.0), 3),
            "max_suspended": max((b.max_suspended for b in beats), default=0),
            "worker_tokens_per_s": round(sum(b.tokens_per_s for b in beats), 2),
        }


class Phase:
    """One fresh stack (nats-server, broker, one worker) and the client that drives it."""

    def __init__(self, name: str, options: OverloadOptions, workdir: Path, logs: Path | None = None) -> None:
        self.name, self.options, self.workdir, self.logs = name, options, workdir, logs
        self.worker_args, self.model = options.worker_args()
        self.server: NatsServer | None = None
        self.procs: list[Process] = []
        self.client: Client | None = None
        self.tap = WireTap()

    async def __aenter__(self) -> Phase:
        self.server = NatsServer(self.workdir / "nats").start()
        broker = spawn("broker", self.server.url, self.options.broker_args(self.name), self.workdir / "broker.log")
        worker = spawn("gpu_worker", self.server.url, self.worker_args, self.workdir / "worker.log")
        self.procs = [broker, worker]
        self.client = await Client.connect(self.server.url)
        await wait_for_model(self.client, self.model, self.procs)
        # One answer before the clock starts: the broker's start-up grace is over, the model warm.
        await self.client.complete("warm up", model=self.model, workload="warm-up", max_tokens=1, deadline_s=300)
        await self.tap.start(self.client)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.client is not None:
            await self.client.close()
        if self.server is not None:
            stop_all(self.procs, self.server)
        if self.logs is not None:  # kept beside the report: what each request went through, by request id
            self.logs.mkdir(parents=True, exist_ok=True)
            for part in ("broker", "worker"):
                shutil.copyfile(self.workdir / f"{part}.log", self.logs / f"{self.name}-{part}.log")

    async def one(self, arrival: Arrival, start: float, prompts: list[str]) -> Sample:
        assert self.client is not None
        workload, priority = TIERS[arrival.tier]
        sample = Sample(arrival.tier, arrival.user, arrival.index, arrival.at_s, time.monotonic() - start)
        generation = self.client.generate(
            messages=[{"role": "user", "content": _prompt(prompts, arrival)}],
            model=self.model,
            workload=workload,
            priority=priority,
            user=arrival.user,
            deadline_s=self.options.deadline_s,
            max_tokens=self.options.max_tokens,
            temperature=0.0,
            seed=1,
            stream=arrival.tier == "high",  # high's first chunk is timed; low's chunks would only load the client
        )
        submitted = time.monotonic()
        try:
            async for _ in generation:
                if sample.first_chunk_ms is None:
                    sample.first_chunk_ms = round((time.monotonic() - submitted) * 1000, 3)
            assert generation.result is not None
            sample.queued_ms = generation.result.timings.queued_ms
            sample.completion_tokens = generation.result.usage.completion_tokens
            if generation.result.finish_reason not in ("stop", "length"):
                sample.outcome = f"cut_{generation.result.finish_reason}"
        except IrisError as exc:
            sample.outcome = exc.code.value
        sample.latency_ms = round((time.monotonic() - submitted) * 1000, 3)
        sample.request_id = generation.request_id or ""
        return sample

    async def drive(self, arrivals: list[Arrival], prompts: list[str]) -> list[Sample]:
        """Open loop: each request sent at its planned time, whatever the ones before it are doing."""
        tasks: list[asyncio.Task[Sample]] = []
        start = time.monotonic()
        for arrival in arrivals:
            delay_s = start + arrival.at_s - time.monotonic()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            tasks.append(asyncio.create_task(self.one(arrival, start, prompts)))
        samples = list(await asyncio.gather(*tasks))
        await self.tap.settled([s.request_id for s in samples])
        await self.tap.fresh_beat()
        return samples

    async def capacity(self, n: int, prompts: list[str]) -> float:
        """Served requests/s with both slots kept busy: 2 × max concurrency closed loops, low labels."""
        loops = 2 * MAX_CONCURRENCY
        per_loop = max(1, n // loops)
        start = time.monotonic()

        async def loop(k: int) -> list[Sample]:
            user = f"{TIERS['low'][0]}-{k + 1}"
            return [
                await self.one(Arrival(0.0, "low", user, k * per_loop + i), start, prompts) for i in range(per_loop)
            ]

        done = [s for samples in await asyncio.gather(*(loop(k) for k in range(loops))) for s in samples]
        served = sum(s.outcome == "ok" for s in done)
        if served == 0:
            raise RuntimeError(f"capacity: no request of {len(done)} served ({Counter(s.outcome for s in done)})")
        return served / (time.monotonic() - start)


async def measure_capacity(options: OverloadOptions, prompts: list[str]) -> float:
    with tempfile.TemporaryDirectory(prefix="iris-overload-capacity-") as tmp:
        async with Phase("capacity", options, Path(tmp)) as phase:
            return await phase.capacity(options.capacity_requests, prompts)


async def run_phase(
    name: str, arrivals: list[Arrival], options: OverloadOptions, prompts: list[str], logs: Path
) -> tuple[dict[str, Any], list[Sample]]:
    with tempfile.TemporaryDirectory(prefix=f"iris-overload-{name}-") as tmp:
        async with Phase(name, options, Path(tmp), logs) as phase:
            samples = await phase.drive(arrivals, prompts)
            summary = summarize(samples, phase.tap.finals)
            summary["worker"] = phase.tap.suspensions()
            return summary, samples
