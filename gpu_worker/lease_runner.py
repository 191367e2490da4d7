"""Run one lease: fetch the body by sequence, stream the answer, then let the request go.

Order is the whole point: the final `Result` (or `Error`) is stored and published first
(`runtime.answers.send_final`), then the request is deleted from the stream, then its lease record, and
then the broker hears that the lease ended (`LeaseEnds`, one `LeasesDone` per event-loop turn however many
ended in it). A worker killed anywhere
before the delete leaves the request in the stream for the broker to re-queue; one killed after it has
already answered. A body that is no longer in the stream means another attempt finished it: nothing runs;
nor does a re-run (attempt > 1) whose request has a stored final: that final is sent again instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.js.kv import KV_DEL, KV_OP
from structlog.stdlib import BoundLogger

from gpu_worker.engines.protocol import (
    Continuation,
    Engine,
    EngineInputError,
    Finished,
    Piece,
    Resumed,
    StopSignal,
    Suspended,
)
from gpu_worker.metrics import WorkerMetrics
from gpu_worker.throughput import ThroughputMeter
from runtime.answers import fetch_final, redeliver, send_final
from runtime.clock import now_ms
from runtime.dead_letters import move_to_dlq
from runtime.progress import ProgressLog, clear_progress, continuable, fetch_progress
from runtime.stream_ops import (
    delete_request,
    error_reply,
    get_request,
    publish_reply,
)
from schemas import headers as h
from schemas.dead_letters import DeadLetterError
from schemas.errors import ErrorCode, InvalidRequest
from schemas.headers import check_reply_to
from schemas.messages import (
    Chunk,
    Error,
    GenerateRequest,
    Lease,
    LeaseDone,
    LeasesDone,
    Progress,
    Result,
    StoredRequest,
    Timings,
    TokenLogprob,
    Usage,
    encoder,
    request_decoder,
)
from schemas.reply_subjects import DEFAULT_REPLY_PREFIXES
from schemas.subjects import done_subject, lease_record_subject, request_owner

_DELETE_RECORD = {KV_OP: KV_DEL}  # what nats-py's `KeyValue.delete` sends, without awaiting an ack
PauseHook = Callable[[Suspended | Resumed], None]


def _no_pause(_event: Suspended | Resumed) -> None:
    return None


@dataclass
class RunStats:
    """What the heartbeat reports: aggregate completion tokens per second of busy time (batched sequences
    add up), from `ThroughputMeter`; and the Prometheus metrics of every lease run."""

    completed: int = 0
    meter: ThroughputMeter = field(default_factory=ThroughputMeter)
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)

    def record(self, completion_tokens: int, run_s: float) -> None:
        self.completed += 1
        ended_s = time.monotonic()
        self.meter.record(ended_s - run_s, ended_s, completion_tokens)

    @property
    def tokens_per_s(self) -> float:
        """Read once per heartbeat, not per run: the meter's cost grows with the runs in its window."""
        return self.meter.tokens_per_s(time.monotonic())


class LeaseEnds:
    """Tells the broker which leases ended: every end of one event-loop turn in one `LeasesDone`, so a
    worker finishing hundreds of short leases a second sends a few messages, not hundreds."""

    def __init__(self, nc: NATS, model: str, log: structlog.stdlib.BoundLogger) -> None:
        self.nc, self.subject, self.log = nc, done_subject(model), log
        self._pending: list[LeaseDone] = []
        self._flushing: set[asyncio.Task[None]] = set()

    def add(self, done: LeaseDone) -> None:
        self._pending.append(done)
        if len(self._pending) == 1:  # the first of this turn: send them all once the turn is over
            task = asyncio.create_task(self._flush())
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)

    async def _flush(self) -> None:
        pending, self._pending = self._pending, []
        try:
            await self.nc.publish(self.subject, encoder.encode(LeasesDone(pending)))
        except Exception as exc:  # the broker still learns it: our heartbeat stops listing these leases
            self.log.warning("lease ends not sent", count=len(pending), error=str(exc))


class LeaseRunner:
    def __init__(
        self,
        nc: NATS,
        engine: Engine,
        worker_id: str,
        stats: RunStats,
        log: structlog.stdlib.BoundLogger,
        reply_prefixes: Sequence[str] = DEFAULT_REPLY_PREFIXES,
    ) -> None:
        self.nc, self.engine = nc, engine
        self.reply_prefixes = tuple(reply_prefixes)
        self.worker_id = worker_id
        self.stats = stats
        self.log = log
        self.ends = LeaseEnds(nc, engine.model_name, log)

    async def run(
        self, lease: Lease, stop: StopSignal, answered: Callable[[], None], paused: PauseHook = _no_pause
    ) -> None:
        """`answered` is called once the final reply is out: the engine slot is free from then on, while
        the request still has to leave the stream and its lease still has to end. `paused` hears the
        engine's `Suspended` and `Resumed`."""
        log = self.log.bind(seq=lease.stream_seq, request_id=lease.request_id, attempt=lease.attempt)
        stored = await get_request(self.nc, lease.stream_seq)
        if stored is None:
            log.info("request already gone from the stream, nothing to run")
            answered()
            await self._release(lease, delete_body=False)
            return
        refused = self._reply_refused(lease, stored)
        if refused is not None:  # never answered there: the error names the header, in the dead letter only
            await self._dead_letter(answered, lease, stored, refused, log, reply_to="")
            return
        owner = request_owner(stored.subject)
        if lease.attempt > 1 and await self._answered_before(lease, owner, log):
            answered()
            await self._release(lease, delete_body=True)
            return
        try:
            request = request_decoder.decode(stored.body)
        except msgspec.ValidationError as exc:
            await self._dead_letter(answered, lease, stored, f"invalid request body: {exc}", log)
            return
        except msgspec.DecodeError as exc:
            await self._dead_letter(answered, lease, stored, f"malformed JSON body: {exc}", log)
            return
        if stop.reason == "cancelled":
            error = error_reply(ErrorCode.CANCELLED, "cancelled by the client before it started")
            await self._fail(answered, lease, owner, error, log)
            return
        if now_ms() >= lease.deadline_ms:
            error = error_reply(ErrorCode.DEADLINE_EXCEEDED, "deadline passed before start")
            await self._fail(answered, lease, owner, error, log)
            return
        await self._generate(lease, owner, request, stop, stored.stored_ms or lease.enqueued_ms, log, answered, paused)

    async def _answered_before(self, lease: Lease, owner: str | None, log: BoundLogger) -> bool:
        """A re-run whose earlier attempt stored its final (and was lost before deleting the request):
        send that final again rather than run the prompt twice."""
        final = await fetch_final(self.nc, lease.request_id, owner)
        if final is None:
            return False
        log.info("request already answered by an earlier attempt, final sent again", kind=final.kind)
        await redeliver(self.nc, lease.reply_to, lease.request_id, owner, final)
        return True

    def _reply_refused(self, lease: Lease, stored: StoredRequest) -> str | None:
        """Why this worker will not publish to the lease's reply subject (None: it will). Checked against the
        stored request itself, so a broker that missed it, or a forged lease record, cannot reopen it."""
        if stored.headers.get(h.REPLY_TO) != lease.reply_to:
            return f"header {h.REPLY_TO} of the stored request is not the lease's reply subject"
        try:
            check_reply_to(lease.reply_to, request_owner(stored.subject), self.reply_prefixes)
        except InvalidRequest as exc:
            return exc.message
        return None

    async def _generate(
        self,
        lease: Lease,
        owner: str | None,
        request: GenerateRequest,
        stop: StopSignal,
        enqueued_ms: int,
        log: structlog.stdlib.BoundLogger,
        answered: Callable[[], None],
        paused: PauseHook,
    ) -> None:
        started_ms = now_ms()
        timers = _stop_timers(lease, stop, started_ms)
        parts: list[str] = []
        logprobs: list[TokenLogprob] | None = [] if request.logprobs else None
        try:
            finished = await self._stream(lease, owner, request, stop, started_ms, parts, logprobs, paused)
        except EngineInputError as exc:
            await self._fail(answered, lease, owner, error_reply(ErrorCode.INVALID_REQUEST, str(exc)), log)
            return
        except Exception as exc:
            log.exception("engine failed")
            error = error_reply(ErrorCode.WORKER_FAILED, f"engine failed: {exc}")
            await self._fail(answered, lease, owner, error, log)
            return
        finally:
            for timer in timers:
                timer.cancel()
        stopped = _STOPPED.get(finished.finish_reason)
        if stopped is not None:
            await self._fail(answered, lease, owner, stopped, log)
            return
        run_ms = now_ms() - started_ms
        self.stats.record(finished.completion_tokens, run_ms / 1000)
        self.stats.metrics.finished(lease, finished.finish_reason, run_ms / 1000, finished.completion_tokens)
        result = Result(
            text="".join(parts),
            finish_reason=finished.finish_reason,
            usage=Usage(finished.prompt_tokens, finished.completion_tokens),
            timings=Timings(queued_ms=float(max(0, started_ms - enqueued_ms)), run_ms=float(run_ms)),
            worker=self.worker_id,
            attempt=lease.attempt,
            logprobs=logprobs,
        )
        await send_final(self.nc, lease.reply_to, lease.request_id, result, owner=owner)
        answered()
        await clear_progress(self.nc, lease.request_id, owner)
        usage = (finished.prompt_tokens, finished.completion_tokens)
        await self._release(lease, delete_body=True, usage=usage, run_ms=run_ms)
        log.info("request done", finish_reason=finished.finish_reason, tokens=finished.completion_tokens, run_ms=run_ms)

    async def _stream(
        self,
        lease: Lease,
        owner: str | None,
        request: GenerateRequest,
        stop: StopSignal,
        started_ms: int,
        parts: list[str],
        logprobs: list[TokenLogprob] | None,
        paused: PauseHook,
    ) -> Finished:
        """Run the engine, streaming each piece as a `Chunk` when asked; the text and logprobs so far are
        collected into `parts` and `logprobs` (None: not asked for). A continuable answer streams through its
        `ProgressLog` (each chunk only once stored), and a re-run continues the stored progress if any."""
        progress = await self._progress(lease, owner, request, parts)
        continuation = Continuation(tuple(progress.tokens)) if progress is not None and progress.tokens else None
        finished: Finished | None = None
        first = True
        async for event in self.engine.generate(request, stop, continuation):
            if isinstance(event, Piece):
                if first:
                    self.stats.metrics.first_token(lease, (now_ms() - started_ms) / 1000)
                    first = False
                if progress is not None:
                    progress.add(event.text, event.tokens)
                elif request.stream:
                    chunk_logprobs = list(event.logprobs) if logprobs is not None else None
                    chunk = Chunk(len(parts), event.text, lease.attempt, chunk_logprobs)
                    await publish_reply(self.nc, lease.reply_to, lease.request_id, chunk, owner=owner)
                parts.append(event.text)
                if logprobs is not None:
                    logprobs.extend(event.logprobs)
            elif isinstance(event, (Suspended, Resumed)):
                paused(event)
            else:
                finished = event
        if progress is not None:
            await progress.close()  # every chunk is out before the final
        assert finished is not None, "engine ended without Finished"
        return finished

    async def _progress(
        self, lease: Lease, owner: str | None, request: GenerateRequest, parts: list[str]
    ) -> ProgressLog | None:
        """The answer's progress log (None: it is not continuable, so none is kept). A re-run starts from
        what an earlier attempt stored: its chunks go to the client again (it drops the indexes it has)."""
        if not (self.engine.continues and continuable(request)):
            return None
        base = Progress(lease.attempt, self.engine.model_name, [], [])
        if lease.attempt > 1:
            stored = await fetch_progress(self.nc, lease.request_id, owner)
            if stored is not None and stored.model == self.engine.model_name:
                base = Progress(lease.attempt, stored.model, stored.tokens, stored.pieces)
        continued = bool(base.pieces)

        async def deliver(index: int, text: str) -> None:
            chunk = Chunk(index, text, lease.attempt, continued=continued)
            await publish_reply(self.nc, lease.reply_to, lease.request_id, chunk, owner=owner)

        if request.stream:
            for index, text in enumerate(base.pieces):
                await deliver(index, text)
        parts.extend(base.pieces)
        if base.tokens:
            self.log.info("continuing an earlier attempt", request_id=lease.request_id, tokens=len(base.tokens))
        self.stats.metrics.continued(lease, len(base.tokens))
        return ProgressLog(self.nc, lease.request_id, owner, base, deliver if request.stream else None)

    async def _fail(
        self, answered: Callable[[], None], lease: Lease, owner: str | None, error: Error, log: BoundLogger
    ) -> None:
        log.warning("request failed", code=error.code, reason=error.message)
        self.stats.metrics.failed(lease, error.code)
        await send_final(self.nc, lease.reply_to, lease.request_id, error, owner=owner)
        answered()
        await clear_progress(self.nc, lease.request_id, owner)
        await self._release(lease, delete_body=True)

    async def _dead_letter(
        self,
        answered: Callable[[], None],
        lease: Lease,
        stored: StoredRequest,
        reason: str,
        log: BoundLogger,
        reply_to: str | None = None,
    ) -> None:
        """A request no worker can ever run: it moves to `IRIS_DLQ` and its client gets `invalid_request`
        on `reply_to` (default the lease's; "" = nobody)."""
        log.warning("request invalid, dead-lettered", reason=reason)
        code = ErrorCode.INVALID_REQUEST
        reply_to = lease.reply_to if reply_to is None else reply_to
        self.stats.metrics.failed(lease, code.value)
        try:
            await move_to_dlq(self.nc, stored, code, reason, lease.attempt, (reply_to, lease.request_id), now_ms())
        except DeadLetterError as exc:
            log.error("dead letter not stored; the request stays until its TTL", error=exc.message)
            owner = request_owner(stored.subject)
            await send_final(self.nc, reply_to, lease.request_id, error_reply(code, reason), owner=owner)
        answered()
        await self._release(lease, delete_body=False)

    async def _release(
        self, lease: Lease, *, delete_body: bool, usage: tuple[int, int] | None = None, run_ms: float = 0.0
    ) -> None:
        """After the final reply: the request leaves the stream, then its lease record, then the broker
        hears the lease ended (with its real token `usage` when it generated an answer). The record's
        delete is not awaited: a record left behind only makes a future leader re-queue the lease,
        and the worker that gets it again finds the request gone from the stream."""
        if delete_body:
            await delete_request(self.nc, lease.stream_seq)
        await self.nc.publish(lease_record_subject(lease.stream_seq), b"", headers=_DELETE_RECORD)
        prompt_tokens, completion_tokens = usage or (0, 0)
        done = LeaseDone(
            lease.stream_seq,
            lease.model,
            lease.workload,
            prompt_tokens,
            completion_tokens,
            completed=usage is not None,
            run_ms=float(run_ms),
        )
        self.ends.add(done)


_STOPPED = {  # an answer that ended this way gets this error, not a result
    "cancelled": error_reply(ErrorCode.CANCELLED, "cancelled by the client"),
    "shutdown": error_reply(ErrorCode.WORKER_FAILED, "the worker shut down before the answer finished", 1.0),
}


def _stop_timers(lease: Lease, stop: StopSignal, started_ms: int) -> list[asyncio.TimerHandle]:
    """Stop the answer at the lease's deadline, and at its `max_inflight_s` cut-off when it has one."""
    loop = asyncio.get_running_loop()
    timers = [loop.call_later(max(0.0, (lease.deadline_ms - started_ms) / 1000), stop.stop, "deadline")]
    if lease.cutoff_ms:
        timers.append(loop.call_later(max(0.0, (lease.cutoff_ms - started_ms) / 1000), stop.stop, "max_inflight"))
    return timers
