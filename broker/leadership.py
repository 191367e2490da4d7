"""Leader election between brokers through one key in JetStream KV bucket `IRIS_BROKERS`.

Every broker campaigns: `create` on the `leader` key succeeds for exactly one of them. The leader renews
the key with a compare-and-set `update` every `renew_s`; the bucket's TTL (`ttl_s`) removes the key when
renewals stop (the leader died or lost NATS), and the next standby's `create` wins. A leader counts itself
leader only until `ttl_s × VALID_FRACTION` after the last renewal it *sent*, measured on its own clock, so
it stops dispatching before any standby can win the key (the server's TTL starts later, when it stores the
renewal). A renewal refused because someone else holds the key deposes it at once; one that fails for
longer than the term deposes it too. A leader that stops cleanly deletes the key so a standby takes over
without waiting for the TTL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from schemas.subjects import BROKER_BUCKET, LEADER_KEY

RENEW_FRACTION = 0.25  # renew four times per TTL: one lost renewal never costs the lead
VALID_FRACTION = 0.75  # the local term ends well before the server lets the key expire


class LeaderTerm:
    """Pure: whether this broker may act as leader, from when its last successful renewal was sent."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self.revision: int | None = None
        self._valid_until = 0.0

    def won(self, revision: int, sent_at: float) -> None:
        self.revision = revision
        self._valid_until = sent_at + self.ttl_s * VALID_FRACTION

    def lost(self) -> None:
        self.revision = None
        self._valid_until = 0.0

    def holds(self, now: float) -> bool:
        return self.revision is not None and now < self._valid_until


class Leadership:
    """Campaigns until elected, renews while leading, calls `on_elected` / `on_deposed` on each change.
    The callbacks must not block: renewals go on while the service (de)activates."""

    def __init__(
        self,
        js: JetStreamContext,
        broker_id: str,
        *,
        ttl_s: float,
        replicas: int,
        on_elected: Callable[[], None],
        on_deposed: Callable[[str], None],
        log: structlog.stdlib.BoundLogger,
    ) -> None:
        self.js = js
        self.broker_id = broker_id
        self.term = LeaderTerm(ttl_s)
        self.replicas = replicas
        self.on_elected, self.on_deposed = on_elected, on_deposed
        self.log = log
        self._kv: KeyValue | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def leading(self) -> bool:
        return self.term.holds(time.monotonic())

    async def start(self) -> None:
        self._kv = await self._bucket()
        await self._try_to_win()
        self._task = asyncio.create_task(self._campaign())

    async def stop(self) -> None:
        """Stop campaigning; a leader hands the key back so a standby need not wait for the TTL."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._kv is not None and self.term.revision is not None:
            try:
                await self._kv.delete(LEADER_KEY, last=self.term.revision)
            except Exception as exc:  # taken over already, or NATS gone: the TTL does the same job
                self.log.info("leader key not handed back", error=str(exc))
            self.term.lost()

    async def _bucket(self) -> KeyValue:
        try:
            return await self.js.key_value(BROKER_BUCKET)
        except NotFoundError:
            config = KeyValueConfig(
                bucket=BROKER_BUCKET,
                history=1,
                ttl=self.term.ttl_s,
                storage=StorageType.MEMORY,
                replicas=self.replicas,
            )
            return await self.js.create_key_value(config)

    async def _campaign(self) -> None:
        renew_s = self.term.ttl_s * RENEW_FRACTION
        while True:
            await asyncio.sleep(renew_s if self.term.revision is not None else renew_s / 2)
            if self.term.revision is None:
                await self._try_to_win()
            else:
                await self._renew()

    async def _try_to_win(self) -> None:
        assert self._kv is not None
        sent_at = time.monotonic()
        try:
            revision = await self._kv.create(LEADER_KEY, self.broker_id.encode())
        except KeyWrongLastSequenceError:
            return  # someone leads
        except Exception as exc:  # NATS unavailable for now: campaign again next round
            self.log.info("leader election attempt failed", error=str(exc))
            return
        self.term.won(revision, sent_at)
        self.log.info("elected leader", broker=self.broker_id, revision=revision)
        self.on_elected()

    async def _renew(self) -> None:
        assert self._kv is not None and self.term.revision is not None
        sent_at = time.monotonic()
        try:
            revision = await self._kv.update(LEADER_KEY, self.broker_id.encode(), last=self.term.revision)
        except KeyWrongLastSequenceError:
            if await self._own_renewal_landed():
                await self._renew()  # from the revision it left; the term counts from this renewal's send
            else:
                self._depose("another broker holds the leader key")
            return
        except Exception as exc:
            if not self.term.holds(time.monotonic()):
                self._depose(f"leader key not renewed in time: {exc}")
            return
        # The compare-and-set proves no one took the key meanwhile. Counted from when it was sent: had the
        # answer come late, the term is already over until the next renewal, and nothing is offered.
        self.term.won(revision, sent_at)

    async def _own_renewal_landed(self) -> bool:
        """A renewal whose answer came too late (a busy event loop) was still stored: the key moved on but
        still names this broker, and no one else can have held it since, or it would name them."""
        assert self._kv is not None
        try:
            entry = await self._kv.get(LEADER_KEY)
        except Exception as exc:  # gone (expired: renewals came too late) or unreadable: not ours to keep
            self.log.warning("leader key gone before its renewal", error=repr(exc))
            return False
        if entry.value != self.broker_id.encode() or entry.revision is None:
            self.log.warning("leader key held by another broker", holder=(entry.value or b"").decode(errors="replace"))
            return False
        self.log.info("late renewal of the leader key found stored", revision=entry.revision)
        self.term.revision = entry.revision
        return True

    def _depose(self, reason: str) -> None:
        self.term.lost()
        self.log.warning("no longer leader", broker=self.broker_id, reason=reason)
        self.on_deposed(reason)
