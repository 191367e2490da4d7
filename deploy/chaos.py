"""Drive the compose stack from the host and kill its parts under load (the test of deploy/compose.yaml).

    deploy/up.sh && .venv/bin/python deploy/chaos.py [--requests 200] [--out bench-results/chaos.json]

1. One request through the gateway (Ollama API) and one through raw NATS must be answered.
2. `--requests` requests, half through the gateway (each with an `Idempotency-Key`) and half published raw to
   JetStream, at most `--in-flight` at a time; meanwhile a crash (`kill -9` of the container's process:
   Docker 20.10 takes `docker kill` for an operator's stop and restarts nothing) of a worker, then of the
   leading broker, then of the NATS node leading stream IRIS_REQUESTS, each once the part before came back.
   A tap per NATS node on `_INBOX.>` sees every reply Iris sends (each carries `Iris-Request-Id`), so it
   counts final replies per request whichever way it came in (deploy/taps.py).
   Checked: every request ends with exactly one final reply and at most one result; the killed containers are
   restarted by their restart policy and rejoin (a worker heart-beats again, a broker leads or stands by in a
   new term, the NATS node is a current replica again) with no manual step.
3. `docker compose down` while four answers stream (two raw, two streamed through the gateway): it must
   return within the stop timeouts in stop order, leave no answer half-sent (each raw one got its final
   reply, each gateway stream ended with `done`) and need no SIGKILL (no container exited 137).
Prints the figures and writes them as JSON; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import NoStreamResponseError
from stack import (
    broker_leads,
    crash,
    docker,
    leader_id,
    leading_broker,
    service_of,
    state,
    stream_cluster,
    until,
    wait_back,
)
from taps import FINAL_KINDS, Taps, expected
from verdicts import STOP_GRACE_S, checks

from schemas import headers as h
from schemas.subjects import HEARTBEAT_FILTER, REQUEST_STREAM, request_subject

DEPLOY = Path(__file__).resolve().parent
COMPOSE = ["docker-compose", "-p", "iris", "-f", str(DEPLOY / "compose.yaml")]
MODEL = "gemma3-270m"
OLLAMA_MODEL = "gemma3:270m"
PUBLISH_ATTEMPTS = 10


async def http_generate(http: httpx.AsyncClient, prompt: str, max_tokens: int) -> str:
    """One call with an `Idempotency-Key`, sent again with the same key when the connection failed under it
    (a pooled keep-alive connection the server closed as the request went out, uvicorn's 5 s idle timeout):
    the retry is the same Iris request, so it joins the first or reads its stored answer."""
    body = {"model": OLLAMA_MODEL, "prompt": prompt, "stream": False, "options": {"num_predict": max_tokens}}
    headers = {"Idempotency-Key": f"chaos-{uuid.uuid4().hex}"}
    try:
        response = await http.post("/api/generate", json=body, headers=headers, timeout=180)
    except httpx.TransportError as exc:
        response = await http.post("/api/generate", json=body, headers=headers, timeout=180)
        return f"http {response.status_code} (sent again after {type(exc).__name__})"
    return f"http {response.status_code}"


async def nats_generate(nc: NATS, prompt: str, max_tokens: int, request_id: str) -> None:
    """Publish as any NATS client would; the tap reads the replies."""
    deadline_ms = int(time.time() * 1000) + 170_000
    headers = {
        h.REPLY_TO: nc.new_inbox(),
        h.DEADLINE: str(deadline_ms),
        h.MSG_ID: request_id,
        h.MSG_TTL: "180",
    }
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).encode()
    for attempt in range(PUBLISH_ATTEMPTS):
        try:
            await nc.jetstream().publish(request_subject(MODEL, "default"), body, headers=headers)
            return
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, NoStreamResponseError):
            # No ack while the stream elects a new leader after a node loss: publish again with the same
            # Nats-Msg-Id, as a NATS client does; the dedupe window keeps it one request.
            if attempt == PUBLISH_ATTEMPTS - 1:
                raise
            await asyncio.sleep(1.0)


async def wait_final(tap: Taps, request_id: str) -> None:
    async def final() -> bool:
        return tap[request_id].finals > 0

    await until(final, f"a final reply to {request_id}")


class Heartbeats:
    """When each worker id was last heard on `iris.worker.hb.>` (ids are <host>-<pid>-<hex>; host = compose service)."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}

    async def on_beat(self, msg: Msg) -> None:
        self.last[msg.subject.rsplit(".", 1)[-1]] = time.monotonic()

    def heard_since(self, service: str, since: float) -> bool:
        return any(service_of(id_) == service and at > since for id_, at in self.last.items())


@dataclass
class Run:
    nc: NATS
    http: httpx.AsyncClient
    tap: Taps
    beats: Heartbeats
    raw_ids: list[str] = field(default_factory=list)
    http_statuses: list[str] = field(default_factory=list)
    finished: int = 0
    gate: int = 0  # requests may be started up to this index
    gate_moved: asyncio.Event = field(default_factory=asyncio.Event)

    async def one(self, index: int, max_tokens: int) -> None:
        prompt = f"Request {index}: name a colour."
        if index % 2:
            request_id = f"chaos-{index}-{uuid.uuid4().hex[:8]}"
            self.raw_ids.append(request_id)
            await nats_generate(self.nc, prompt, max_tokens, request_id)
            await wait_final(self.tap, request_id)
        else:
            self.http_statuses.append(await http_generate(self.http, prompt, max_tokens))
        self.finished += 1
        if self.finished % 25 == 0:
            print(f"chaos: {self.finished} requests finished", flush=True)

    def open_gate(self, gate: int) -> None:
        self.gate = gate
        self.gate_moved.set()

    async def load(self, requests: int, in_flight: int, max_tokens: int) -> None:
        slots = asyncio.Semaphore(in_flight)

        async def guarded(index: int) -> None:
            try:
                await self.one(index, max_tokens)
            finally:
                slots.release()

        tasks = []
        for index in range(requests):
            while index >= self.gate:
                self.gate_moved.clear()
                await self.gate_moved.wait()
            await slots.acquire()
            tasks.append(asyncio.create_task(guarded(index)))
        await asyncio.gather(*tasks)

    async def until_finished(self, count: int) -> None:
        async def done() -> bool:
            return self.finished >= count

        await until(done, f"{count} requests finished", timeout_s=600)


async def kill_worker(run: Run) -> dict[str, object]:
    service = "worker-1"
    restarts = int(state(service)["restarts"])
    crash(service)
    back_s = await wait_back(service, restarts)
    back_at = time.monotonic()

    async def beats_again() -> bool:
        return run.beats.heard_since(service, back_at)

    beat_s = await until(beats_again, f"{service} heart-beats again")
    return {"killed": service, "back_s": round(back_s, 1), "heartbeat_after_s": round(beat_s, 1)}


async def kill_leading_broker(run: Run) -> dict[str, object]:
    """Crash the leader; a new term must begin: the standby, or the killed one back first (whichever takes
    the key once its TTL ran out), as a process other than the one killed."""
    killed_id = await leader_id(run.nc)
    service = service_of(killed_id)
    restarts = int(state(service)["restarts"])
    crash(service)

    async def new_term() -> bool:
        return await leader_id(run.nc) not in ("", killed_id)

    takeover_s = await until(new_term, "a broker leads in a new term")
    back_s = await wait_back(service, restarts)
    return {
        "killed": service,
        "new_term_after_s": round(takeover_s, 1),
        "leads_now": await leading_broker(run.nc),
        "back_s": round(back_s, 1),
        "rejoined_as": "leader" if await broker_leads(service) else "standby",
    }


async def kill_stream_leader(run: Run) -> dict[str, object]:
    service = str((await stream_cluster(run.nc))["leader"])
    restarts = int(state(service)["restarts"])
    crash(service)
    back_s = await wait_back(service, restarts)

    async def current() -> bool:
        cluster = await stream_cluster(run.nc)
        return cluster["leader"] == service or bool(cluster["replicas"].get(service))

    current_s = await until(current, f"{service} a current replica of {REQUEST_STREAM}")
    return {
        "killed": service,
        "back_s": round(back_s, 1),
        "current_replica_after_s": round(current_s, 1),
        "stream_leader_now": (await stream_cluster(run.nc))["leader"],
    }


KILLS = (kill_worker, kill_leading_broker, kill_stream_leader)


async def chaos(run: Run, requests: int, in_flight: int, max_tokens: int) -> list[dict[str, object]]:
    """Each kill once `requests * k/4` requests finished, with the next quarter allowed to start meanwhile."""
    step = requests // (len(KILLS) + 1)
    run.open_gate(step + in_flight)
    load = asyncio.create_task(run.load(requests, in_flight, max_tokens))
    kills = []
    for number, kill in enumerate(KILLS, start=1):
        await run.until_finished(step * number - in_flight // 2)
        kills.append({"at_finished": run.finished, **await kill(run)})
        print(f"chaos: {kills[-1]}", flush=True)
        run.open_gate(step * (number + 1) + in_flight)
    run.open_gate(requests)
    await load
    return kills


def verdict(run: Run, requests: int) -> dict[str, object]:
    raw = [run.tap[request_id] for request_id in run.raw_ids]
    other_ids = run.tap.ids() - set(run.raw_ids)
    every = raw + [run.tap[request_id] for request_id in other_ids]
    strays = {i: run.tap[i].kinds for i in sorted(other_ids) if not i.startswith("idem-")}  # neither way in
    finals: defaultdict[int, int] = defaultdict(int)
    for s in every:
        finals[s.finals] += 1
    return {
        "requests": requests,
        "raw_nats": len(raw),
        "gateway": len(run.http_statuses),
        "gateway_statuses": {status: run.http_statuses.count(status) for status in sorted(set(run.http_statuses))},
        "request_ids_seen": len(every),
        "ids_not_sent_by_the_run": strays,
        "final_replies_per_request": dict(sorted(finals.items())),
        "results_twice": sum(s.kinds.count("result") > 1 for s in every),
        "rerun_after_lost_lease": sum(len(s.attempts) > 1 for s in every),
        "error_codes": sorted(code for s in every for code in s.error_codes),
    }


@dataclass
class HttpStream:
    """One streamed gateway call (Ollama NDJSON): whether it began and whether it ended with `done`."""

    began: bool = False
    done: bool = False
    status: int = 0

    async def run(self, http: httpx.AsyncClient, prompt: str, max_tokens: int) -> None:
        body = {"model": OLLAMA_MODEL, "prompt": prompt, "options": {"num_predict": max_tokens}}
        async with http.stream("POST", "/api/generate", json=body, timeout=180) as response:
            self.status = response.status_code
            async for line in response.aiter_lines():
                if line.strip():
                    self.began = True
                    self.done = bool(json.loads(line).get("done"))


def exit_codes(since: float) -> dict[str, int]:
    """How each container of the stack ended since `since` (Unix time): 137 is a SIGKILL past its grace."""
    lines = docker(
        "events", "--since", f"{since:.0f}", "--until", f"{time.time() + 1:.0f}", "--filter", "event=die",
        "--filter", "label=com.docker.compose.project=iris",
        "--format", "{{.Actor.Attributes.name}} {{.Actor.Attributes.exitCode}}",
    ).splitlines()  # fmt: skip
    return dict(sorted((name, int(code)) for name, code in (line.split() for line in lines)))


async def compose_down(run: Run, max_tokens: int) -> dict[str, object]:
    """Stop the stack while answers stream, two raw and two through the gateway (both workers' two slots):
    every answer that began must end with its final reply, and no container may need a SIGKILL."""
    prompt = "Tell a long story about the sea."
    ids = [f"down-{i}-{uuid.uuid4().hex[:8]}" for i in range(2)]
    for request_id in ids:
        await nats_generate(run.nc, prompt, max_tokens, request_id)
    streams = [HttpStream() for _ in range(2)]
    calls = [asyncio.create_task(stream.run(run.http, prompt, max_tokens)) for stream in streams]

    async def four_streaming() -> bool:
        return sum("chunk" in run.tap[i].kinds for i in ids) + sum(stream.began for stream in streams) >= 4

    await until(four_streaming, "four answers streaming")
    since, start = time.time(), time.monotonic()
    await asyncio.to_thread(subprocess.run, [*COMPOSE, "down"], check=True, capture_output=True)
    down_s = time.monotonic() - start
    await asyncio.gather(*calls, return_exceptions=True)
    return {
        "down_s": round(down_s, 1),
        "stop_grace_s": STOP_GRACE_S,
        "streaming_at_down": {"raw_nats": len(ids), "gateway": len(streams)},
        "left_mid_answer": sum(run.tap[i].finals == 0 for i in ids) + sum(not stream.done for stream in streams),
        "raw_final_kinds": [next((k for k in run.tap[i].kinds if k in FINAL_KINDS), None) for i in ids],
        "gateway_ended": [f"http {stream.status}, done={stream.done}" for stream in streams],
        "error_codes": [c for i in ids for c in run.tap[i].error_codes],
        "exit_codes": exit_codes(since - 1),
    }


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--http", default="http://127.0.0.1:8080")
    parser.add_argument("--nats", default="nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224")
    parser.add_argument("--api-key", default="example-paid-key", help="a gateway key (iris.example.toml has this one)")
    parser.add_argument("--no-down", action="store_true", help="leave the stack running at the end")
    parser.add_argument("--out", type=Path, default=Path("bench-results/chaos.json"))
    return parser.parse_args()


async def smoke_test(run: Run) -> dict[str, str]:
    """One request through the gateway and one raw; the taps cleared once both reached every one of them."""
    smoke_id = f"smoke-{uuid.uuid4().hex[:8]}"
    await nats_generate(run.nc, "Why is the sky blue?", 32, smoke_id)
    await wait_final(run.tap, smoke_id)
    smoke = {
        "gateway": await http_generate(run.http, "Why is the sky blue?", 32),
        "raw_nats": run.tap[smoke_id].kinds[-1],
    }
    print(f"smoke: {smoke}", flush=True)

    async def smoke_tapped() -> bool:  # a tap may get a final after its client: clear only once it has
        return all(sum(seen.finals > 0 for seen in one.seen.values()) >= 2 for one in run.tap.taps)

    await until(smoke_tapped, "both smoke answers at every tap")
    run.tap.clear()
    return smoke


async def main() -> int:
    args = arguments()
    nc = await nats.connect(args.nats.split(","), error_cb=expected, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
    tap, beats = Taps(args.nats.split(",")), Heartbeats()
    await tap.start()
    await nc.subscribe(HEARTBEAT_FILTER, cb=beats.on_beat)
    auth = {"Authorization": f"Bearer {args.api_key}"}
    async with httpx.AsyncClient(base_url=args.http, headers=auth) as http:
        run = Run(nc, http, tap, beats)
        smoke = await smoke_test(run)
        started = time.monotonic()
        kills = await chaos(run, args.requests, args.in_flight, args.max_tokens)
        report: dict[str, object] = {
            "smoke": smoke,
            "kills": kills,
            "load_s": round(time.monotonic() - started, 1),
            **verdict(run, args.requests),
        }
        if not args.no_down:
            report["down"] = await compose_down(run, 200)
    await tap.close()
    await nc.close()
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    failures = checks(report, args.requests)
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
