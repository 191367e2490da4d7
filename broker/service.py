"""The broker's async shell: moves events between NATS and the pure `Scheduler`.

It reads `IRIS_REQUESTS` with a headers-only ordered consumer, watches `IRIS_LEASES`, listens to worker
heartbeats, and every `tick_s` lets time pass. Each decision the scheduler returns becomes I/O here: a
lease is written to the KV bucket *before* it is offered, a rejected or expired request gets its typed
`Error` and then leaves the stream. On start it rebuilds from the bucket and the stream, so a broker can
be killed at any point and a new one carries on.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from broker.admission import AdmissionService
from broker.config import BrokerConfig
from broker.dead_letters import DeadLetters
from broker.limits import scheduler_limits
from broker.metrics import BrokerMetrics
from broker.queue import WaitingRequest
from broker.scheduler import Admitted, Rejection, Scheduler, SchedulerLimits
from broker.streams import ensure_lease_bucket, ensure_streams
from broker.wfq import estimate_prompt_tokens
from schemas import headers as h
from schemas.connection import connect
from schemas.errors import ErrorCode, InvalidRequest, IrisError
from schemas.headers import parse_request_headers
from schemas.messages import (
    Lease,
    QueueUpdate,
    encoder,
    heartbeat_decoder,
    lease_answer_decoder,
    lease_decoder,
    lease_done_decoder,
)
from schemas.stream_ops import delete_request, error_reply, publish_reply
from schemas.subjects import (
    BROKER_STATS_SUBJECT,
    CANCEL_FILTER,
    DONE_FILTER,
    HEARTBEAT_FILTER,
    REQUEST_FILTER,
    cancelled_request_id,
    is_token,
    lease_key,
    lease_offer_subject,
    parse_request_subject,
)

CONSUMER_HEARTBEAT_S = 2.0
CONSUMER_CHECK_S = 5.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class BrokerService:
    def __init__(self, config: BrokerConfig, log: structlog.stdlib.BoundLogger | None = None) -> None:
        self.config = config
        self.log = log or structlog.get_logger().bind(service="broker")
        self.scheduler = Scheduler(_limits(config), now_ms())
        self.metrics = BrokerMetrics()
        self._nc: NATS | None = None
        self._kv: KeyValue | None = None
        self._admission: AdmissionService | None = None
        self._dead_letters = DeadLetters(self.log, self.metrics)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._subs: list[Any] = []
        self._stopped = asyncio.Event()
        self._closing = False
        self._request_sub: Any = None
        self._indexed_seq = 0  # highest stream sequence the request consumer delivered

    @property
    def nc(self) -> NATS:
        assert self._nc is not None, "broker not started"
        return self._nc

    async def start(self) -> None:
        self._nc = await connect(self.config.nats_url, "iris-broker")
        js = self.nc.jetstream()
        await ensure_streams(js, self.config)
        self._kv = await ensure_lease_bucket(js, self.config)
        self._dead_letters.connect(self.nc, self._kv)
        await self._restore_leases()
        self._subs.append(await self.nc.subscribe(HEARTBEAT_FILTER, cb=self._on_heartbeat))
        self._subs.append(await self.nc.subscribe(CANCEL_FILTER, cb=self._on_cancel))
        self._subs.append(await self.nc.subscribe(DONE_FILTER, cb=self._on_lease_done))
        await self._subscribe_requests(DeliverPolicy.ALL)
        self._spawn(self._watch_request_consumer())
        self._admission = AdmissionService(self.nc, self._kv, self.log)
        await self._admission.start()
        self._spawn(self._tick_loop())
        self._spawn(self._stats_loop())
        if self.config.metrics_port:
            self.metrics.serve(self.config.metrics_host, self.config.metrics_port)
        self.log.info("broker started", nats=self.config.nats_url, policy=self.config.policy)

    async def _subscribe_requests(self, policy: DeliverPolicy, start_seq: int | None = None) -> None:
        self._request_sub = await self.nc.jetstream().subscribe(
            REQUEST_FILTER,
            cb=self._on_request,
            ordered_consumer=True,
            idle_heartbeat=CONSUMER_HEARTBEAT_S,
            config=ConsumerConfig(headers_only=True, deliver_policy=policy, opt_start_seq=start_seq),
        )

    async def _watch_request_consumer(self) -> None:
        """nats-py's reset of a dead ordered consumer can itself fail (a node down mid-election), and then no
        request is ever seen again: if the consumer is gone, subscribe again after the last one indexed."""
        while not self._closing:
            await asyncio.sleep(CONSUMER_CHECK_S)
            try:
                await self._request_sub.consumer_info()
            except NotFoundError:
                self.log.warning("request consumer lost, subscribing again", after_seq=self._indexed_seq)
                try:
                    await self._request_sub.unsubscribe()
                except Exception as exc:  # the old subscription may be half gone already
                    self.log.info("old request subscription not removed cleanly", error=str(exc))
                await self._subscribe_requests(DeliverPolicy.BY_START_SEQUENCE, self._indexed_seq + 1)
            except Exception as exc:  # unavailable for now (leader election): look again next round
                self.log.info("request consumer not checked", error=str(exc))

    async def _restore_leases(self) -> None:
        """Read every live lease, then keep watching for leases that end (workers delete them)."""
        assert self._kv is not None
        watcher = await self._kv.watchall()
        restored = 0
        while True:
            entry = await watcher.updates(timeout=5.0)  # type: ignore[no-untyped-call]
            if entry is None:
                break
            if entry.value:
                self.scheduler.restore_lease(lease_decoder.decode(entry.value), now_ms())
                restored += 1
        self.log.info("leases restored", count=restored)
        self._spawn(self._watch_leases(watcher))

    async def _watch_leases(self, watcher: Any) -> None:
        # `async for`, not `updates(timeout=…)`: Python 3.11's wait_for can swallow a cancel when its
        # queue is never empty, which under load left stop() waiting forever.
        async for entry in watcher:
            if self._closing:
                return
            if entry is None:
                continue
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                self.scheduler.lease_ended(int(entry.key), now_ms())
                self._pump()
            elif not self.scheduler.knows(int(entry.key)):
                self.scheduler.restore_lease(lease_decoder.decode(entry.value), now_ms())

    def reload(self, config: BrokerConfig) -> None:
        """Apply new limits and weights without a restart (SIGHUP in `python -m broker`)."""
        if config.policy != self.config.policy:
            self.log.warning("policy changes need a restart; keeping it", policy=self.config.policy)
        self.config = config
        self.scheduler.update_limits(_limits(config))
        self.log.info(
            "config reloaded",
            max_concurrency=config.max_concurrency,
            max_queue=config.max_queue,
            workload_weights=config.workload_weights,
        )
        self._pump()

    async def stop(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._admission is not None:
            await self._admission.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.metrics.close()
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()
        self._stopped.set()
        self.log.info("broker stopped")

    async def __aenter__(self) -> BrokerService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("broker task failed", exc_info=task.exception())

    # --- events in -------------------------------------------------------------------------------

    async def _on_request(self, msg: Msg) -> None:
        try:
            await self._index_request(msg)
        except Exception:  # one request must never stop the consumer that feeds every other one
            self.log.exception("request indexing failed", subject=msg.subject)

    async def _index_request(self, msg: Msg) -> None:
        meta = msg.metadata
        seq = meta.sequence.stream
        self._indexed_seq = max(self._indexed_seq, seq)
        if self.scheduler.knows(seq):
            return
        headers = msg.headers or {}
        now = now_ms()
        try:
            request = self._index_entry(msg.subject, headers, seq, int(meta.timestamp.timestamp() * 1000), now)
        except IrisError as exc:  # unparseable: a dead letter, its client gets the parse error
            await self._dead_letters.unparseable(seq, headers, exc)
            return
        decision = self.scheduler.admit(request, now)
        if isinstance(decision, Rejection):
            await self._reject(decision, leased_before=False)
        elif isinstance(decision, Admitted):
            self.metrics.admitted(request)
            if not request.ticket:  # an admission's one answer is its ticket
                update = QueueUpdate(position=decision.position, eta_s=decision.eta_s)
                await publish_reply(self.nc, request.reply_to, request.request_id, update)
            self._pump()

    @staticmethod
    def _index_entry(subject: str, headers: dict[str, str], seq: int, stored_ms: int, now: int) -> WaitingRequest:
        parts = parse_request_subject(subject)
        if parts is None or not all(is_token(p) for p in parts):
            raise InvalidRequest(f"subject {subject!r} is not iris.req.<model>.<workload> with [A-Za-z0-9_-] tokens")
        labels = parse_request_headers(headers, now, fallback_id=str(seq))
        return WaitingRequest(
            stream_seq=seq,
            request_id=labels.request_id,
            model=parts[0],
            workload=parts[1],
            reply_to=labels.reply_to,
            deadline_ms=labels.deadline_ms,
            enqueued_ms=stored_ms,
            priority=labels.priority,
            user=labels.user,
            cost_tokens=labels.cost_tokens,
            prompt_tokens_est=estimate_prompt_tokens(_body_bytes(headers)),
            ticket=headers.get(h.ADMISSION) == "1",
        )

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            beat = heartbeat_decoder.decode(msg.data)
        except Exception as exc:  # a foreign publisher on our subject must not stop the broker
            self.log.warning("bad heartbeat ignored", subject=msg.subject, error=str(exc))
            return
        for request in self.scheduler.heartbeat(beat, now_ms()):
            self.log.warning("lease lost, re-queued", seq=request.stream_seq, worker=beat.worker_id)
            self.metrics.reclaimed(request)
        self._pump()

    async def _on_lease_done(self, msg: Msg) -> None:
        try:
            done = lease_done_decoder.decode(msg.data)
            pool = self.scheduler.pools.get(done.model)
            lease = pool.leases.get(done.stream_seq) if pool is not None else None
            self.metrics.finished(done, lease.priority if lease else 1, now_ms())
            self.scheduler.lease_usage(done)
        except Exception as exc:  # a foreign publisher on our subject must not stop the broker
            self.log.warning("bad lease usage ignored", subject=msg.subject, error=str(exc))

    async def _on_cancel(self, msg: Msg) -> None:
        """A waiting request leaves at once; a running one is stopped by the worker that runs it."""
        request_id = cancelled_request_id(msg.subject)
        request = self.scheduler.cancel_waiting(request_id)
        if request is not None:
            await self._reject(Rejection(request, ErrorCode.CANCELLED, "cancelled by the client while queued"))
            return
        ticket = self.scheduler.release_ticket(request_id, now_ms())
        if ticket is not None:
            assert self._admission is not None
            await self._admission.drop(ticket, "released by id")
            self._pump()

    async def _tick_loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.config.tick_s)
            requeued, expired = self.scheduler.tick(now_ms())
            for request in requeued:
                self.log.warning("worker timed out, lease re-queued", seq=request.stream_seq, attempt=request.attempt)
                self.metrics.reclaimed(request)
            for request in expired:
                await self._reject(Rejection(request, ErrorCode.DEADLINE_EXCEEDED, "deadline passed while queued"))
            await self._dead_letters.failed_on_workers(self.scheduler.take_dead_letters())
            for ticket in self.scheduler.expire_tickets(now_ms()):
                assert self._admission is not None
                await self._admission.drop(ticket, "expired at max_inflight")
            self._pump()
            for reply_to, request_id, position, eta_s in self.scheduler.queue_updates():
                await publish_reply(self.nc, reply_to, request_id, QueueUpdate(position=position, eta_s=eta_s))

    # --- decisions out ---------------------------------------------------------------------------

    async def _stats_loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.config.stats_s)
            stats = self.metrics.snapshot(now_ms(), self._load(), self._weight, policy=self.config.policy)
            await self.nc.publish(BROKER_STATS_SUBJECT, encoder.encode(stats))

    def _weight(self, workload: str) -> float:
        return self.config.workload_weights.get(workload, 1.0)

    def _load(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(queued, running) per (model, workload) now."""
        load = {}
        for model, pool in self.scheduler.pools.items():
            running = collections.Counter(lease.workload for lease in pool.leases.values())
            seen = {w for m, w in self.metrics.window.flows if m == model}
            for workload in seen | set(running) | set(self.config.workload_weights):
                load[(model, workload)] = (pool.queue.count(workload), running[workload])
        return load

    def _pump(self) -> None:
        now = now_ms()
        for lease in self.scheduler.dispatch(now):
            self.metrics.started(lease, now)
            self._spawn(self._offer(lease))

    async def _offer(self, lease: Lease) -> None:
        assert self._kv is not None and self._admission is not None
        if lease.ticket:
            await self._admission.grant(lease)
            return
        payload = encoder.encode(lease)
        # The record is on the wire before the offer (one connection keeps order) and both round trips
        # overlap. Should the broker die before the record is stored, its successor still adopts the lease
        # from the worker's heartbeat, which lists it as running.
        recorded = asyncio.ensure_future(self._kv.put(lease_key(lease.stream_seq), payload))
        try:
            reply = await self.nc.request(
                lease_offer_subject(lease.worker_id), payload, timeout=self.config.offer_timeout_s
            )
        except NoRespondersError:
            self.log.warning("worker gone", worker=lease.worker_id, seq=lease.stream_seq)
            self.scheduler.worker_gone(lease.worker_id, now_ms(), lease.stream_seq)
        except NatsTimeout:
            # The worker may have accepted; its heartbeats decide (lease_confirm_ms) so it never runs twice.
            self.log.warning("lease offer timed out", worker=lease.worker_id, seq=lease.stream_seq)
            return
        else:
            if not lease_answer_decoder.decode(reply.data).accepted:
                self.scheduler.offer_refused(lease.stream_seq)
        finally:
            try:
                await recorded
            except Exception as exc:
                self.log.error("lease record failed", seq=lease.stream_seq, error=str(exc))
        self._pump()

    async def _reject(self, rejection: Rejection, *, leased_before: bool = True) -> None:
        """Send the typed error, then remove the request (and a stale lease left by an earlier attempt)."""
        request = rejection.request
        self.log.info("request rejected", seq=request.stream_seq, code=rejection.code.value, reason=rejection.message)
        self.metrics.rejected(request, rejection.code.value, rejection.message, now_ms())
        error = error_reply(rejection.code, rejection.message, rejection.retry_after_s)
        await publish_reply(self.nc, request.reply_to, request.request_id, error)
        await delete_request(self.nc, request.stream_seq)
        if leased_before:
            assert self._kv is not None
            await self._kv.delete(lease_key(request.stream_seq))


def _limits(config: BrokerConfig) -> SchedulerLimits:
    return scheduler_limits(config)


def _body_bytes(headers: dict[str, str]) -> int:
    """Body size as a headers-only consumer reports it."""
    try:
        return int(headers.get(h.NATS_MSG_SIZE, "0"))
    except ValueError:
        return 0
