"""The broker process: connects, campaigns for the lead, hears worker heartbeats all along, and while it
leads runs one `Term` (`broker.term`): the scheduler and everything that feeds it.

Every broker campaigns (`Leadership`) and keeps each worker's last heartbeat, so a standby that is elected
knows the live workers at once. Elected, it starts a term, again while JetStream is unavailable; deposed or
stopping, it ends the term (`await term.end()`), so any broker can be killed at any point and another carries on.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from broker.config import BrokerConfig
from broker.configured_limits import scheduler_limits
from broker.core.scheduler import Scheduler
from broker.dead_letters import DeadLetters
from broker.leadership import Leadership
from broker.loops import TaskGroup
from broker.metrics import BrokerMetrics
from broker.streams import ensure_lease_bucket, ensure_streams
from broker.term import Term
from broker.warm_feed import WarmFeed
from runtime.clock import node_id, now_ms
from runtime.connection import connect
from runtime.lifecycle import Service
from schemas.headers import MAX_DEADLINE_S
from schemas.messages import Heartbeat, heartbeat_decoder
from schemas.subjects import HEARTBEAT_FILTER

__all__ = ["BrokerService"]

READ_AHEAD_RETRY_S = 1.0


class BrokerService(Service):
    def __init__(self, config: BrokerConfig, log: structlog.stdlib.BoundLogger | None = None) -> None:
        self.config = config
        self.log = log or structlog.get_logger().bind(service="broker")
        self.metrics = BrokerMetrics(idle_s=config.metrics_idle_s)
        self.broker_id = config.broker_id or node_id()
        self.term: Term | None = None  # while this broker leads
        self._idle = Scheduler(scheduler_limits(config), now_ms())  # what `scheduler` shows between terms
        self._nc: NATS | None = None
        self._leader_nc: NATS | None = None
        self._kv: KeyValue | None = None
        self._leadership: Leadership | None = None
        self._activation: asyncio.Task[None] | None = None
        self._beats: dict[str, tuple[Heartbeat, int]] = {}  # each worker's last heartbeat and when it came
        self._listening_since_ms = 0
        self._term_lock = asyncio.Lock()
        self._owners = TaskGroup(self.log)  # activations and deactivations; `stop` waits for them
        self._dead_letters = DeadLetters(self.log, self.metrics, config.reply_prefix_list)
        self._stopped = asyncio.Event()
        self._closing = False
        self._warm: WarmFeed | None = None  # while standing by: the backlog read ahead

    @property
    def nc(self) -> NATS:
        assert self._nc is not None, "broker not started"
        return self._nc

    @property
    def scheduler(self) -> Scheduler:
        """The current term's scheduler; an empty one while this broker does not lead."""
        return self.term.scheduler if self.term is not None else self._idle

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
        await self._read_ahead()
        await self.nc.subscribe(HEARTBEAT_FILTER, cb=self._on_heartbeat)
        # Its own connection: a renewal's answer must not queue behind a burst of requests on the main one.
        self._leader_nc = await connect(self.config.nats_url, "iris-broker-leadership")
        self._leadership = Leadership(
            self._leader_nc.jetstream(),
            self.broker_id,
            ttl_s=self.config.leader_ttl_s,
            replicas=self.config.replicas,
            on_elected=self._elected,
            on_deposed=self._deposed,
            log=self.log,
        )
        await self._leadership.start()  # the first campaign round is awaited: a lone broker leads from here
        if self._activation is not None:
            await asyncio.gather(self._activation, return_exceptions=True)
        self.log.info("broker started", nats=self.config.nats_url, policy=self.config.policy, broker=self.broker_id)

    def _elected(self) -> None:
        if not self._closing:
            self._activation = self._owners.spawn(self._activate())

    def _deposed(self, reason: str) -> None:
        self._owners.spawn(self._deactivate())

    def _leading(self) -> bool:
        return self._leadership is not None and self._leadership.leading

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

    async def _read_ahead(self) -> None:
        """Stand by with the backlog indexed as it comes, for a term to start from at once (unless
        `read_ahead` is off: a term replays the stream, holding its first round until it has). One that
        cannot start (JetStream busy or unavailable for now) is tried again every second while standing by."""
        if self.config.read_ahead and not await self._start_read_ahead():
            self._owners.spawn(self._read_ahead_later())

    async def _start_read_ahead(self) -> bool:
        max_deadline_s = min(MAX_DEADLINE_S, self.config.duplicate_window_s)
        warm = WarmFeed(self.nc, self.log, self.config.reply_prefix_list, max_deadline_s)
        try:
            await warm.start()
        except Exception as exc:  # until it starts, a term replays the stream instead
            self.log.warning("read-ahead not started", error=repr(exc))
            return False
        if self.term is not None or self._closing or self._warm is not None:  # elected or stopped meanwhile
            await warm.stop()
        else:
            self._warm = warm
        return True

    async def _read_ahead_later(self) -> None:
        while self.term is None and not self._closing and self._warm is None:
            await asyncio.sleep(READ_AHEAD_RETRY_S)
            if self.term is None and not self._closing and self._warm is None and await self._start_read_ahead():
                return

    async def _start_term(self) -> None:
        assert self._kv is not None
        warm, self._warm = self._warm, None
        handover = await warm.hand_over() if warm is not None else None
        self.term = Term(
            self.nc,
            self._kv,
            self.config,
            log=self.log,
            metrics=self.metrics,
            dead_letters=self._dead_letters,
            leading=self._leading,
            listening_since_ms=self._listening_since_ms,
        )
        self.metrics.leading(True)
        await self.term.start(self._live_beats, handover)
        self.log.info("leading", broker=self.broker_id)

    async def _deactivate(self, spare: asyncio.Task[Any] | None = None) -> None:
        """End the term (deposed, stopping, or failed to start), and a term still starting but `spare`."""
        term, self.term = self.term, None
        if term is not None:
            term.scheduling = False  # from now on it offers nothing
        activation = self._activation
        if activation is not None and activation is not spare and not activation.done():
            activation.cancel()
            await asyncio.gather(activation, return_exceptions=True)
        async with self._term_lock:
            self.metrics.leading(False)
            if term is not None:
                await term.end()
            self._idle = Scheduler(scheduler_limits(self.config), now_ms())
            if term is not None and not self._closing and self._warm is None:
                await self._read_ahead()

    def _live_beats(self) -> list[tuple[Heartbeat, int]]:
        """The last heartbeat of every worker heard within `worker_timeout_s` (the others are forgotten)."""
        cutoff_ms = now_ms() - int(self.config.worker_timeout_s * 1000)
        for worker_id, (_, heard_ms) in list(self._beats.items()):
            if heard_ms < cutoff_ms:
                del self._beats[worker_id]  # gone: keeps the map to live workers
        return list(self._beats.values())

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            beat = heartbeat_decoder.decode(msg.data)
        except Exception as exc:  # a foreign publisher on our subject must not stop the broker
            self.log.warning("bad heartbeat ignored", subject=msg.subject, error=str(exc))
            return
        heard_ms = now_ms()
        self._beats[beat.worker_id] = (beat, heard_ms)
        self.metrics.labels.serve(beat.model)
        if self.term is not None and self.term.scheduling:
            await self.term.heartbeat(beat, heard_ms)

    def reload(self, config: BrokerConfig) -> None:
        """Apply new limits and weights without a restart (SIGHUP in `python -m broker`)."""
        if config.policy != self.config.policy:
            self.log.warning("policy changes need a restart; keeping it", policy=self.config.policy)
        self.config = config
        self._dead_letters.reply_prefixes = config.reply_prefix_list
        if self.term is not None:
            self.term.reload(config)
        else:
            self._idle.update_limits(scheduler_limits(config))
        self.log.info(
            "config reloaded",
            max_concurrency=config.max_concurrency,
            max_queue=config.max_queue,
            workload_weights=config.workload_weights,
        )

    async def stop(self) -> None:
        if self._closing:
            return
        self._closing = True
        await self._deactivate()
        if self._warm is not None:
            await self._warm.stop()
        if self._leadership is not None:
            await self._leadership.stop()  # after the last offer: the successor starts from a quiet state
        if self._leader_nc is not None and not self._leader_nc.is_closed:
            await self._leader_nc.close()
        await self._owners.wait()
        self.metrics.close()
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()
        self._stopped.set()
        self.log.info("broker stopped")

    async def wait_stopped(self) -> None:
        await self._stopped.wait()
