"""Simulated workers for `iris bench scale`: many zero-time workers of one model behind one connection.

Each simulated worker does on the wire what a FakeEngine `gpu_worker` does for a one-token request, so the
broker sees a real fleet: it heartbeats every `heartbeat_s` (slots, free slots, what it runs, draining or
not), answers each `LeaseOffer` on its own subject at once (accepting what fits its free slots), then for
every accepted lease publishes the final `Result` to the client's inbox, deletes the request from the
stream (`no_erase`), deletes the lease record, and reports the offer's ends in one `LeasesDone`. One
wildcard subscription serves every worker's offer subject; the heartbeats of the fleet are spread evenly
over the interval. Completions are counted here (when, how many), which is what the bench rates.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.js.kv import KV_DEL, KV_OP

from runtime.clock import now_ms
from schemas import headers as h
from schemas.messages import (
    Heartbeat,
    LeaseAnswer,
    LeaseDone,
    LeasesDone,
    Result,
    Timings,
    Usage,
    encoder,
    lease_offer_decoder,
)
from schemas.subjects import (
    JS_MSG_DELETE,
    done_subject,
    heartbeat_subject,
    lease_offer_subject,
    lease_record_subject,
    request_subject,
)

_DELETE_RECORD = {KV_OP: KV_DEL}
BEAT_TICKS_PER_S = 20  # the fleet's heartbeats go out in this many slices per second


@dataclass
class SimWorker:
    worker_id: str
    slots: int
    running: set[int] = field(default_factory=set)


class SimFleet:
    """`n` workers of `model` with `slots` each; `draining` until `serve()`, so a backlog can build up."""

    def __init__(
        self, url: str, model: str, n: int, slots: int, heartbeat_s: float = 1.0, record_first: int = 0
    ) -> None:
        self.url, self.model, self.heartbeat_s = url, model, heartbeat_s
        self.workers = {f"sim{i}": SimWorker(f"sim{i}", slots) for i in range(n)}
        self.draining = True
        self.completed = 0
        self.completions: list[tuple[float, int]] = []  # (perf_counter, completed so far), one per offer
        self.record_first = record_first
        self.first_workloads: list[str] = []  # the workload of each of the first `record_first` leases taken
        self._nc: Any = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> SimFleet:
        self._nc = await nats.connect(self.url, name="iris-bench-fleet", pending_size=256 * 1024 * 1024)
        await self._nc.subscribe(lease_offer_subject("*"), cb=self._on_offer)
        self._acks = self._nc.new_inbox()
        await self._nc.subscribe(self._acks, cb=self._ignore)
        await self._nc.flush()
        self._tasks.append(asyncio.create_task(self._beat_forever()))
        return self

    def serve(self) -> None:
        """Stop draining: from each worker's next heartbeat on, it takes leases."""
        self.draining = False

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._nc is not None:
            await self._nc.close()

    async def _ignore(self, msg: Any) -> None:
        return None

    async def _beat_forever(self) -> None:
        workers = list(self.workers.values())
        per_tick = max(1, len(workers) // max(1, int(BEAT_TICKS_PER_S * self.heartbeat_s)))
        tick_s = self.heartbeat_s * per_tick / len(workers)
        index = 0
        next_s = time.monotonic()
        while True:
            for worker in workers[index : index + per_tick]:
                await self._beat(worker)
            index = index + per_tick if index + per_tick < len(workers) else 0
            next_s += tick_s
            await asyncio.sleep(max(0.0, next_s - time.monotonic()))

    async def _beat(self, worker: SimWorker) -> None:
        free = 0 if self.draining else worker.slots - len(worker.running)
        beat = Heartbeat(
            worker.worker_id,
            self.model,
            worker.slots,
            free,
            sorted(worker.running),
            0.0,
            now_ms(),
            False,
            self.draining,
        )
        await self._nc.publish(heartbeat_subject(self.model, worker.worker_id), encoder.encode(beat))

    async def _on_offer(self, msg: Any) -> None:
        worker = self.workers.get(msg.subject.split(".")[2])
        if worker is None:
            return
        leases = lease_offer_decoder.decode(msg.data).leases
        room = 0 if self.draining else worker.slots - len(worker.running)
        accepted, refused = leases[:room], leases[room:]
        answer = LeaseAnswer([lease.stream_seq for lease in accepted], [lease.stream_seq for lease in refused])
        worker.running.update(answer.accepted)  # its heartbeats list them until they end
        await msg.respond(encoder.encode(answer))
        if not accepted:
            return
        if len(self.first_workloads) < self.record_first:
            self.first_workloads += [lease.workload for lease in accepted][
                : self.record_first - len(self.first_workloads)
            ]
        ends = []
        for lease in accepted:  # a zero-time answer: result, delete from the stream, record, lease end
            result = Result("x", "length", Usage(1, 1), Timings(0.0, 0.0), worker.worker_id, lease.attempt)
            reply_headers = {h.KIND: h.KIND_RESULT, h.REQUEST_ID: lease.request_id}
            await self._nc.publish(lease.reply_to, encoder.encode(result), headers=reply_headers)
            delete = b'{"seq":%d,"no_erase":true}' % lease.stream_seq
            await self._nc.publish(JS_MSG_DELETE, delete, reply=self._acks)
            await self._nc.publish(lease_record_subject(lease.stream_seq), b"", headers=_DELETE_RECORD)
            ends.append(LeaseDone(lease.stream_seq, lease.model, lease.workload, 1, 1, True, 0.1))
        await self._nc.publish(done_subject(self.model), encoder.encode(LeasesDone(ends)))
        worker.running.difference_update(answer.accepted)
        self.completed += len(accepted)
        self.completions.append((time.perf_counter(), self.completed))

    def rate_between(self, low: int, high: int) -> tuple[float, float, float]:
        """Completions per second between the `low`-th and `high`-th completion: (rate, start, end)."""
        start = next(t for t, count in self.completions if count >= low)
        end = next(t for t, count in self.completions if count >= high)
        done_low = next(count for _, count in self.completions if count >= low)
        done_high = next(count for _, count in self.completions if count >= high)
        return (done_high - done_low) / max(1e-9, end - start), start, end


BODY = b'{"prompt": "Why is the sky blue?", "max_tokens": 1, "stream": false}'  # one token: nothing to stream


async def publish_backlog(nc: Any, model: str, n: int, workload: str = "default", cost_tokens: int = 0) -> None:
    """`n` one-token requests to `model`/`workload`, pipelined; their replies go to an inbox nobody reads.
    `cost_tokens`: sent as `Iris-Tokens` (what the workers report they took: 2), else estimated."""
    js = nc.jetstream()
    inbox = nc.new_inbox()
    deadline = str(now_ms() + 3_000_000)
    pending = []
    for i in range(n):
        headers = {h.REPLY_TO: inbox, h.DEADLINE: deadline, h.MSG_ID: f"s{time.time_ns()}-{i}"}
        if cost_tokens:
            headers[h.TOKENS] = str(cost_tokens)
        pending.append(await js.publish_async(request_subject(model, workload), BODY, headers=headers))
        if len(pending) >= 5_000:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)
