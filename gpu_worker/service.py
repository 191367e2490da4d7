"""The worker service: answers lease offers, runs leases on its engine's slots, and heart-beats.

An offer (one or more leases) is answered at once: each lease is accepted while a slot is free and
refused otherwise, and each accepted one then runs in its own task. The heartbeat lists every running
lease, which is how the broker tells a lease that is running from one that was lost. At start it writes
its engine's `ModelCard` to KV bucket `IRIS_MODELS` (for the gateway's `/api/show`). Cancels come from
stream `IRIS_CANCELS` (`schemas.cancels`): a lease for a request cancelled before its offer arrived is
accepted and ends `cancelled` without running, a running one stops within a token. Suspend and resume
orders (`suspension.Suspensions`) free a running lease's slot and take it back. SIGTERM drains:
no new leases, running ones finish (suspended ones are resumed first), then it exits.
"""

from __future__ import annotations

import asyncio

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import NoStreamResponseError, NotFoundError, ServiceUnavailableError
from nats.js.kv import KeyValue

from gpu_worker.config import WorkerConfig
from gpu_worker.engines.protocol import Engine, StopSignal
from gpu_worker.lease_runner import LeaseRunner, RunStats
from gpu_worker.suspension import Suspensions
from runtime.cancels import CancelFeed
from runtime.clock import node_id, now_ms
from runtime.connection import connect
from runtime.lifecycle import Service
from runtime.stream_ops import while_unavailable
from schemas.cancels import CancelBook
from schemas.messages import (
    Heartbeat,
    Lease,
    LeaseAnswer,
    LeaseControlAnswer,
    encoder,
    lease_control_decoder,
    lease_offer_decoder,
)
from schemas.reply_subjects import may_cancel
from schemas.subjects import (
    CANCEL_STREAM,
    LEASE_BUCKET,
    MODEL_BUCKET,
    heartbeat_subject,
    lease_control_subject,
    lease_offer_subject,
)

SHUTDOWN_REPLY_S = 1.0  # after the drain timeout: time for stopped answers to send their error and leave
CARD_GIVE_UP_S = 30.0


class WorkerService(Service):
    def __init__(self, config: WorkerConfig, engine: Engine, log: structlog.stdlib.BoundLogger | None = None) -> None:
        self.config = config
        self.engine = engine
        self.worker_id = config.worker_id or node_id()
        self.log = log or structlog.get_logger().bind(service="gpu_worker")
        self.log = self.log.bind(worker=self.worker_id, model=engine.model_name)
        self.stats = RunStats()
        # Listed in heartbeats until the lease ends: seq → (task, stop signal, lease).
        self.running: dict[int, tuple[asyncio.Task[None], StopSignal, Lease]] = {}
        self.busy: set[int] = set()  # leases holding an engine slot: until their final reply is out
        max_suspended = getattr(engine, "max_suspended", 0)
        self.suspensions = Suspensions(engine.slots, max_suspended, self.busy, self.stats.metrics)
        self.draining = False
        self.cancels = CancelBook()
        self._nc: NATS | None = None
        self._runner: LeaseRunner | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def nc(self) -> NATS:
        assert self._nc is not None, "worker not started"
        return self._nc

    async def start(self) -> None:
        await self.engine.load()
        self._nc = await connect(self.config.nats_url, f"iris-worker-{self.worker_id}")
        await self._lease_bucket()  # the broker has set up the streams and buckets
        await self._publish_card()
        await CancelFeed(self.nc, self.cancels, self._on_cancel, self.log).start()  # before the first offer
        prefixes = self.config.reply_prefix_list
        self._runner = LeaseRunner(self.nc, self.engine, self.worker_id, self.stats, self.log, prefixes)
        await self.nc.subscribe(lease_offer_subject(self.worker_id), cb=self._on_offer)
        await self.nc.subscribe(lease_control_subject(self.worker_id), cb=self._on_control)
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop())
        if self.config.metrics_port:
            self.stats.metrics.serve(self.config.metrics_host, self.config.metrics_port)
        self.log.info("worker started", slots=self.engine.slots, gpu=self.engine.on_gpu)

    async def _lease_bucket(self) -> KeyValue:
        """The broker creates the bucket and the cancel stream; a worker started first waits for them, and
        for JetStream itself (a fresh cluster answers nothing until it has elected its meta leader)."""
        js = self.nc.jetstream()
        for attempt in range(1_000_000):
            try:
                await js.stream_info(CANCEL_STREAM)
                return await js.key_value(LEASE_BUCKET)
            except NotFoundError:
                if attempt % 20 == 0:
                    self.log.info("waiting for the broker to create the lease bucket", bucket=LEASE_BUCKET)
            except (NatsTimeout, NoRespondersError, NoStreamResponseError, ServiceUnavailableError) as exc:
                self.log.info("waiting for JetStream", error=str(exc) or type(exc).__name__)
            await asyncio.sleep(0.25)
        raise RuntimeError("unreachable")

    async def _publish_card(self) -> None:
        """The model's card, for `/api/show`. Serving does not depend on it: a failure is logged, not fatal."""
        card = self.engine.model_card()

        async def put() -> None:
            bucket = await self.nc.jetstream().key_value(MODEL_BUCKET)
            await bucket.put(card.model, encoder.encode(card))

        try:  # through the bucket stream's leader election (it may be seconds old on a fresh cluster)
            await while_unavailable(put, CARD_GIVE_UP_S)
        except Exception as exc:
            self.log.warning("could not publish the model card", bucket=MODEL_BUCKET, error=str(exc))

    async def _on_offer(self, msg: Msg) -> None:
        try:
            offer = lease_offer_decoder.decode(msg.data)
        except Exception as exc:
            self.log.warning("bad lease offer", error=str(exc))
            await msg.respond(encoder.encode(LeaseAnswer(accepted=[], reason="malformed lease offer")))
            return
        accepted: list[int] = []
        refused: list[int] = []
        for lease in offer.leases:
            if lease.stream_seq in self.running:
                accepted.append(lease.stream_seq)  # a re-sent offer for what already runs here: run it once
            elif self.draining or len(self.busy) >= self.engine.slots:
                refused.append(lease.stream_seq)
            else:
                stop = StopSignal()
                if self.cancels.cancelled(lease.request_id, lease.reply_to):
                    stop.stop("cancelled")  # its cancel came first: the runner answers `cancelled`, runs nothing
                task = asyncio.create_task(self._run(lease.stream_seq, lease, stop))
                self.running[lease.stream_seq] = (task, stop, lease)
                self.busy.add(lease.stream_seq)
                accepted.append(lease.stream_seq)
        reason = ("draining" if self.draining else "no free slot") if refused else ""
        await msg.respond(encoder.encode(LeaseAnswer(accepted=accepted, refused=refused, reason=reason)))

    async def _on_control(self, msg: Msg) -> None:
        try:
            order = lease_control_decoder.decode(msg.data)
        except Exception as exc:
            self.log.warning("bad lease control order", error=str(exc))
            await msg.respond(encoder.encode(LeaseControlAnswer(reason=f"malformed lease control order: {exc}")))
            return
        if self.draining:
            order = type(order)(resume=order.resume)  # a draining worker suspends nothing more
        answer = await self.suspensions.apply(order)
        if answer.suspended or answer.resumed:
            self.log.info("leases suspended or resumed", suspended=answer.suspended, resumed=answer.resumed)
        await msg.respond(encoder.encode(answer))

    async def _on_cancel(self, owner: str | None, request_id: str) -> None:
        """Stop a running request, if its owner asks (`may_cancel`)."""
        for _, stop, lease in self.running.values():
            if lease.request_id == request_id and may_cancel(owner, lease.reply_to):
                stop.stop("cancelled")  # the engine ends within one token; the runner answers `cancelled`

    async def _run(self, seq: int, lease: Lease, stop: StopSignal) -> None:
        assert self._runner is not None
        try:
            paused = self.suspensions.track(lease, stop)
            await self._runner.run(lease, stop, answered=lambda: self.busy.discard(seq), paused=paused)
        except Exception:
            # The request stays in the stream; the broker re-queues it when our heartbeat stops listing it.
            self.log.exception("lease failed", seq=seq)
        finally:
            self.busy.discard(seq)
            self.suspensions.forget(seq)
            self.running.pop(seq, None)

    def heartbeat(self) -> Heartbeat:
        tokens_per_s = round(self.stats.tokens_per_s, 2)
        suspended = self.suspensions.suspended
        metrics = self.stats.metrics
        metrics.beat(
            self.engine.model_name, self.worker_id, self.engine.slots, len(self.busy), tokens_per_s, len(suspended)
        )
        return Heartbeat(
            worker_id=self.worker_id,
            model=self.engine.model_name,
            slots=self.engine.slots,
            free_slots=max(0, self.engine.slots - len(self.busy)),
            running=sorted(self.running),
            tokens_per_s=tokens_per_s,
            sent_ms=now_ms(),
            gpu=self.engine.on_gpu,
            draining=self.draining,
            suspended=sorted(suspended),
            max_suspended=self.suspensions.max_suspended,
            suspensions=self.suspensions.suspensions,
            resumes=dict(self.suspensions.resumes),
            resume_ms=self.suspensions.resume_ms,
        )

    async def _heartbeat_loop(self) -> None:
        subject = heartbeat_subject(self.engine.model_name, self.worker_id)
        while True:
            self.cancels.forget_expired(now_ms())
            try:
                await self.nc.publish(subject, encoder.encode(self.heartbeat()))
            except Exception as exc:
                self.log.warning("heartbeat failed", error=str(exc))
            await asyncio.sleep(self.config.heartbeat_s)

    async def stop(self) -> None:
        """Drain: refuse new leases, let running ones finish (up to drain_timeout_s), then close."""
        if self._closing:
            return
        self._closing = True
        self.draining = True
        self.suspensions.resume_all()  # they finish too; the engine runs them as its slots free up
        tasks = [task for task, _, _ in self.running.values()]
        if tasks:
            self.log.info("draining", running=len(tasks))
            _, pending = await asyncio.wait(tasks, timeout=self.config.drain_timeout_s)
            if pending:  # cut off: each ends within a token with `worker_failed`, its client is not left waiting
                self.log.warning("drain timeout, stopping running answers", running=len(pending))
                for _, stop, _ in list(self.running.values()):
                    stop.stop("shutdown")
                _, pending = await asyncio.wait(pending, timeout=SHUTDOWN_REPLY_S)
            for task in pending:
                task.cancel()
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            await asyncio.gather(self._heartbeat_task, return_exceptions=True)
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.drain()
        await self.engine.close()
        self.stats.metrics.close()
        self.log.info("worker stopped")
