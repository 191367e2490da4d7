"""The broker's async shell: moves events between NATS and the pure `Scheduler`.

Every broker campaigns for the lead (`Leadership`) and hears worker heartbeats; only the leader schedules.
A term starts from `IRIS_LEASES`, the heartbeats heard so far and the stream (headers-only ordered
consumer), exactly as after a restart, then follows leases, heartbeats and cancels, and every `tick_s`
lets time pass. Each decision becomes I/O here: a lease is recorded in the bucket as it is offered, a
rejected or expired request gets its typed `Error` and then leaves the stream. A term that ends (deposed,
stopping) drops all of that, so any broker can be killed at any point and another carries on.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from broker.admission import AdmissionService
from broker.cancels import cancelled_rejection, withdraw_cancelled
from broker.config import BrokerConfig
from broker.dead_letters import DeadLetters
from broker.intake import waiting_request
from broker.leadership import Leadership
from broker.lease_records import LeaseRecords
from broker.limits import scheduler_limits
from broker.loops import every, guarded
from broker.metrics import BrokerMetrics
from broker.offers import offer_leases
from broker.request_feed import RequestFeed
from broker.scheduler import Admitted, Rejection, Scheduler
from broker.stats import flow_load
from broker.streams import ensure_lease_bucket, ensure_streams
from runtime.cancels import CancelFeed
from runtime.clock import node_id, now_ms
from runtime.connection import connect
from runtime.stream_ops import delete_request, error_reply, publish_reply
from schemas.cancels import CancelBook
from schemas.errors import ErrorCode, IrisError
from schemas.headers import MAX_DEADLINE_S
from schemas.messages import (
    Heartbeat,
    Lease,
    QueueUpdate,
    encoder,
    heartbeat_decoder,
    leases_done_decoder,
)
from schemas.subjects import (
    BROKER_STATS_SUBJECT,
    DONE_FILTER,
    HEARTBEAT_FILTER,
    lease_key,
)


class BrokerService:
    def __init__(self, config: BrokerConfig, log: structlog.stdlib.BoundLogger | None = None) -> None:
        self.config = config
        self.log = log or structlog.get_logger().bind(service="broker")
        self.scheduler = Scheduler(scheduler_limits(config), now_ms())
        self.metrics = BrokerMetrics()
        self._nc: NATS | None = None
        self._leader_nc: NATS | None = None
        self._kv: KeyValue | None = None
        self._admission: AdmissionService | None = None
        self.broker_id = config.broker_id or node_id()
        self._leadership: Leadership | None = None
        self._activation: asyncio.Task[None] | None = None
        self._pump_due = False  # a scheduling round is due at the end of this event-loop turn
        self._scheduling = False  # a term is fully up: heartbeats go to the scheduler, not only to `_beats`
        self._beats: dict[str, tuple[Heartbeat, int]] = {}  # each worker's last heartbeat and when it came
        self._listening_since_ms = 0
        self._term_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()  # the current term's
        self._owners: set[asyncio.Task[Any]] = set()
        self._dead_letters = DeadLetters(self.log, self.metrics, config.reply_prefix_list)
        self._cancels = CancelBook()  # the term's: read from IRIS_CANCELS when it starts
        self._subs: list[Any] = []
        self._stopped = asyncio.Event()
        self._closing = False

    @property
    def nc(self) -> NATS:
        assert self._nc is not None, "broker not started"
        return self._nc

    async def start(self) -> None:
        """Connect and campaign; everything a leader does starts when this broker is elected."""
        self._nc = await connect(self.config.nats_url, "iris-broker")
        js = self.nc.jetstream()
        await ensure_streams(js, self.config)
        self._kv = await ensure_lease_bucket(js, self.config)
        self._dead_letters.connect(self.nc, self._kv)
        if self.config.metrics_port:
            self.metrics.serve(self.config.metrics_host, self.config.metrics_port)
        self._listening_since_ms = now_ms()  # a standby hears the workers all along: no grace when it takes over
        await self.nc.subscribe(HEARTBEAT_FILTER, cb=self._on_heartbeat)
        # Its own connection: a renewal's answer must not queue behind a burst of requests on the main one.
        self._leader_nc = await connect(self.config.nats_url, "iris-broker-leadership")
        self._leadership = Leadership(
            self._leader_nc.jetstream(),
            self.broker_id,
            ttl_s=self.config.leader_ttl_s,
            replicas=self.config.replicas,
            on_elected=self._elected,
            on_deposed=lambda reason: self._owned(self._deactivate()),
            log=self.log,
        )
        await self._leadership.start()  # the first campaign round is awaited: a lone broker leads from here
        if self._activation is not None:
            await asyncio.gather(self._activation, return_exceptions=True)
        self.log.info("broker started", nats=self.config.nats_url, policy=self.config.policy, broker=self.broker_id)

    def _elected(self) -> None:
        if not self._closing:
            self._activation = self._spawn(self._activate())

    async def _activate(self) -> None:
        """Elected: start a term, again and again while JetStream is unavailable (a node just died)."""
        while self._leadership is not None and self._leadership.term.revision is not None:
            try:
                async with self._term_lock:
                    await self._start_term()
                return
            except Exception as exc:
                self.log.warning("term did not start, trying again", error=repr(exc))
                await self._deactivate(spare=asyncio.current_task())
                await asyncio.sleep(0.5)

    async def _start_term(self) -> None:
        """Rebuild from `IRIS_LEASES`, the heartbeats heard and the stream (as after a restart); schedule."""
        limits = scheduler_limits(self.config)
        # Start-up grace and the no-worker judgement count from when this broker began to hear heartbeats.
        started_ms = max(self._listening_since_ms, now_ms() - limits.worker_timeout_ms)
        self.scheduler = Scheduler(limits, started_ms, adopt_before_ms=now_ms())  # the backlog was admitted
        self.metrics.leading(True)
        assert self._kv is not None
        self._subs.append(await self.nc.subscribe(DONE_FILTER, cb=self._on_leases_done))  # before the read
        for lease in (leases := await LeaseRecords(self._kv).read_all()):
            self.scheduler.restore_lease(lease, now_ms())
        self.log.info("leases restored", count=len(leases))
        self._replay_heartbeats()
        self._scheduling = True
        self._admission = AdmissionService(self.nc, self._kv, self.log)  # a stored cancel may release a ticket
        await self._admission.start()
        self._cancels = CancelBook()
        cancels = CancelFeed(self.nc, self._cancels, self._on_cancel, self.log)
        self._subs.append(cancels)
        await cancels.start()  # every cancel sent so far is known before the first request is indexed
        feed = RequestFeed(self.nc, self._on_request, self.log)
        self._subs.append(feed)
        await feed.subscribe()
        self._spawn(feed.watch())
        self._spawn(every(self.config.tick_s, self._tick, self.log, "tick"))  # reclaims, expiries, cut-offs
        self._spawn(every(self.config.stats_s, self._publish_stats, self.log, "stats"))
        self.log.info("leading", broker=self.broker_id)

    async def _deactivate(self, spare: asyncio.Task[Any] | None = None) -> None:
        """End the term (deposed, stopping, or failed to start): its tasks but `spare`, its subscriptions."""
        self._scheduling = False
        tasks = [task for task in self._tasks if task is not spare]  # a running activation too
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        async with self._term_lock:
            self.metrics.leading(False)
            if self._admission is not None:
                await self._admission.stop()
                self._admission = None
            subs, self._subs = self._subs, []
            for sub in subs:
                try:
                    await sub.unsubscribe()
                except Exception as exc:  # the connection may be closing already
                    self.log.info("subscription not removed cleanly", error=str(exc))
            self.scheduler = Scheduler(scheduler_limits(self.config), now_ms())

    def reload(self, config: BrokerConfig) -> None:
        """Apply new limits and weights without a restart (SIGHUP in `python -m broker`)."""
        if config.policy != self.config.policy:
            self.log.warning("policy changes need a restart; keeping it", policy=self.config.policy)
        self.config = config
        self._dead_letters.reply_prefixes = config.reply_prefix_list
        self.scheduler.update_limits(scheduler_limits(config))
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
        await self._deactivate()
        if self._leadership is not None:
            await self._leadership.stop()  # after the last offer: the successor starts from a quiet state
        if self._leader_nc is not None and not self._leader_nc.is_closed:
            await self._leader_nc.close()
        await asyncio.gather(*self._owners, return_exceptions=True)
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

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        """A task of the current term: `_deactivate` cancels it."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._task_done(self._tasks, done))
        return task

    def _owned(self, coro: Any) -> None:
        """A task that outlives terms (deactivation itself); `stop` waits for it."""
        task = asyncio.create_task(coro)
        self._owners.add(task)
        task.add_done_callback(lambda done: self._task_done(self._owners, done))

    def _task_done(self, tasks: set[asyncio.Task[Any]], task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
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
        if self.scheduler.knows(seq):
            return
        headers = msg.headers or {}
        now = now_ms()
        try:
            stored_ms = int(meta.timestamp.timestamp() * 1000)
            request = waiting_request(
                msg.subject, headers, seq, stored_ms, now, self._dead_letters.reply_prefixes, self._max_deadline_s
            )
        except IrisError as exc:  # unparseable: a dead letter, its client gets the parse error
            await self._dead_letters.unparseable(seq, msg.subject, headers, exc)
            return
        decision = self.scheduler.admit(request, now)
        if isinstance(decision, Admitted) and self._cancels.cancelled(request.request_id, request.reply_to):
            self.scheduler.cancel_waiting(request.request_id)  # cancelled before the feed reached it
            decision = cancelled_rejection(request, "before it was queued")
        if isinstance(decision, Rejection):
            await self._reject(decision, leased_before=False)
        elif isinstance(decision, Admitted):
            self.metrics.admitted(request)
            if not request.ticket:  # an admission's one answer is its ticket
                update = QueueUpdate(position=decision.position, eta_s=decision.eta_s)
                await publish_reply(self.nc, request.reply_to, request.request_id, update)
            self._pump()

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            beat = heartbeat_decoder.decode(msg.data)
        except Exception as exc:  # a foreign publisher on our subject must not stop the broker
            self.log.warning("bad heartbeat ignored", subject=msg.subject, error=str(exc))
            return
        heard_ms = now_ms()
        self._beats[beat.worker_id] = (beat, heard_ms)
        self.metrics.labels.serve(beat.model)
        if self._scheduling:
            self._apply_heartbeat(beat, heard_ms)
            self._pump()

    def _replay_heartbeats(self) -> None:
        """A new term learns every live worker (slots, running leases) from the beats heard before it."""
        cutoff_ms = now_ms() - self.scheduler.limits.worker_timeout_ms
        for worker_id, (beat, heard_ms) in list(self._beats.items()):
            if heard_ms < cutoff_ms:
                del self._beats[worker_id]  # gone: keeps the map to live workers
            else:
                self._apply_heartbeat(beat, heard_ms)

    def _apply_heartbeat(self, beat: Heartbeat, heard_ms: int) -> None:
        for request in self.scheduler.heartbeat(beat, heard_ms):
            self.log.warning("lease lost, re-queued", seq=request.stream_seq, worker=beat.worker_id)
            self.metrics.reclaimed(request)

    async def _on_leases_done(self, msg: Msg) -> None:
        """Leases a worker ended: slots free, and the real tokens of each answer charged to its flow."""
        try:
            ended = leases_done_decoder.decode(msg.data).done
        except Exception as exc:  # a foreign publisher on our subject must not stop the broker
            self.log.warning("bad lease ends ignored", subject=msg.subject, error=str(exc))
            return
        now = now_ms()
        for done in ended:
            if done.completed:
                pool = self.scheduler.pools.get(done.model)
                lease = pool.leases.get(done.stream_seq) if pool is not None else None
                self.metrics.finished(done, lease.priority if lease else 1, now)
                self.scheduler.lease_usage(done, now)
            self.scheduler.lease_ended(done.stream_seq, now)
        self._pump()

    async def _on_cancel(self, owner: str | None, request_id: str) -> None:
        """A waiting request leaves at once; a running one is stopped by the worker that runs it (an offered
        one too: the worker reads the same cancels, and one refused comes back to be withdrawn). Only its
        owner's cancel counts (`iris.cancel.<owner>.<id>`, see `schemas.reply_subjects.may_cancel`)."""
        request = self.scheduler.cancel_waiting(request_id, owner)
        if request is not None:
            await self._reject(cancelled_rejection(request, "while queued"))
            return
        ticket = self.scheduler.release_ticket(request_id, now_ms(), owner)
        if ticket is not None:
            assert self._admission is not None
            await self._admission.drop(ticket, "released by id")
            self._pump()

    async def _tick(self) -> None:
        self._cancels.forget_expired(now_ms())
        requeued, expired = self.scheduler.tick(now_ms())
        for request in requeued:
            self.log.warning("worker timed out, lease re-queued", seq=request.stream_seq, attempt=request.attempt)
            self.metrics.reclaimed(request)
        for request in expired:
            rejection = Rejection(request, ErrorCode.DEADLINE_EXCEEDED, "deadline passed while queued")
            await guarded(self._reject(rejection), self.log, "deadline reply", request.stream_seq)
        for rejection in self.scheduler.drop_unserved(now_ms()):
            reply = self._reject(rejection, leased_before=False)
            await guarded(reply, self.log, "no_capacity reply", rejection.request.stream_seq)
        await self._dead_letters.failed_on_workers(self.scheduler.take_dead_letters())
        for ticket in self.scheduler.expire_tickets(now_ms()):
            assert self._admission is not None
            expiry = self._admission.drop(ticket, "expired at max_inflight")
            await guarded(expiry, self.log, "ticket expiry", ticket.stream_seq)
        self._pump()
        for reply_to, request_id, position, eta_s in self.scheduler.queue_updates(now_ms()):
            await publish_reply(self.nc, reply_to, request_id, QueueUpdate(position=position, eta_s=eta_s))

    # --- decisions out ---------------------------------------------------------------------------

    async def _publish_stats(self) -> None:
        load = flow_load(self.scheduler.pools, self.metrics.window.flows, self.config.workload_weights)
        stats = self.metrics.snapshot(now_ms(), load, self._weight, policy=self.config.policy)
        await self.nc.publish(BROKER_STATS_SUBJECT, encoder.encode(stats))

    @property
    def _max_deadline_s(self) -> float:
        return min(MAX_DEADLINE_S, self.config.duplicate_window_s)

    def _weight(self, workload: str) -> float:
        return self.config.workload_weights.get(workload, 1.0)

    def _pump(self) -> None:
        """Schedule once this event-loop turn is over: one round for every event that freed or filled a slot."""
        if not self._pump_due:
            self._pump_due = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._pump_due = False
        if not self._scheduling or self._leadership is None or not self._leadership.leading:
            return  # a lapsed term offers nothing, even before the campaign notices it was deposed
        now = now_ms()
        offers: dict[str, list[Lease]] = {}
        leases, cancelled = withdraw_cancelled(self.scheduler, self.scheduler.dispatch(now), self._cancels)
        for rejection in cancelled:
            self._spawn(self._reject(rejection))
        for lease in leases:
            self.metrics.started(lease, now)
            if lease.ticket:
                assert self._admission is not None
                self._spawn(self._admission.grant(lease))
            else:
                offers.setdefault(lease.worker_id, []).append(lease)
        for worker_id, leases in offers.items():
            self._spawn(self._offer(worker_id, leases))

    async def _offer(self, worker_id: str, leases: list[Lease]) -> None:
        """Record and offer a round's leases for one worker (`offer_leases`); what it does not take goes back."""
        outcome = await offer_leases(self.nc, worker_id, leases, self.config.offer_timeout_s, self.log)
        if outcome.timed_out:
            return
        if outcome.worker_gone:
            self.scheduler.worker_gone(worker_id, now_ms(), [lease.stream_seq for lease in leases])
        for seq in outcome.not_accepted:
            self.scheduler.offer_refused(seq)
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
