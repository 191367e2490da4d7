"""Which models Iris serves, learned from worker heartbeats (`iris.worker.hb.<model>.<worker>`).

A model is *live* while a worker of it has beaten in the last `forget_s`; it stays *known* for the life of
the gateway, so a request for a model whose workers are restarting goes to the broker (which answers
`no_capacity` with a Retry-After) while a name no worker ever served is `model_not_found` at once.
Ollama-style names are accepted: `gemma3:270m` → `gemma3-270m`, and a `:latest` tag is dropped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from schemas.errors import InvalidRequest, ModelNotFound, NoCapacity
from schemas.messages import Heartbeat, heartbeat_decoder
from schemas.subjects import HEARTBEAT_FILTER, MAX_TOKEN_CHARS, is_token

FORGET_S = 10.0


@dataclass
class ModelState:
    first_seen_s: float  # wall clock, for `created` fields
    workers: dict[str, tuple[float, Heartbeat]] = field(default_factory=dict)  # worker → (monotonic, beat)

    def live_beats(self, now_s: float, forget_s: float) -> list[Heartbeat]:
        return [beat for seen, beat in self.workers.values() if now_s - seen < forget_s and not beat.draining]


class ModelDirectory:
    def __init__(self, forget_s: float = FORGET_S) -> None:
        self.forget_s = forget_s
        self.models: dict[str, ModelState] = {}
        self._sub: Subscription | None = None

    async def start(self, nc: NATS) -> None:
        self._sub = await nc.subscribe(HEARTBEAT_FILTER, cb=self._on_heartbeat)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            beat = heartbeat_decoder.decode(msg.data)
        except msgspec.DecodeError:
            return
        self.observe(beat, time.monotonic())

    def observe(self, beat: Heartbeat, now_s: float) -> None:
        state = self.models.setdefault(beat.model, ModelState(first_seen_s=time.time()))
        state.workers[beat.worker_id] = (now_s, beat)

    def live(self) -> dict[str, list[Heartbeat]]:
        now_s = time.monotonic()
        beats = {name: state.live_beats(now_s, self.forget_s) for name, state in sorted(self.models.items())}
        return {name: live for name, live in beats.items() if live}

    def resolve(self, requested: str | None) -> str:
        """The served model a client's name means; the only live model when none is given."""
        if not requested:
            live = list(self.live())
            if len(live) == 1:
                return live[0]
            if not live:
                raise NoCapacity("no worker is serving any model", retry_after_s=1.0)
            raise InvalidRequest(f'several models are served ({", ".join(live)}); set "model"')
        name = requested.strip().removesuffix(":latest").replace(":", "-")
        if not is_token(name):
            raise InvalidRequest(
                f"model must be a name of [A-Za-z0-9_:-] (at most {MAX_TOKEN_CHARS}), got {requested[:60]!r}"
            )
        if name not in self.models:
            served = ", ".join(self.models) or "none yet"
            raise ModelNotFound(f"model {requested[:60]!r} not found; served: {served}")
        return name
