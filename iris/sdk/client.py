"""The Python client SDK.

    async with await Client.connect("nats://127.0.0.1:4222") as client:
        async for chunk in client.generate("Why is the sky blue?"):
            print(chunk.text, end="")
        result = await client.complete("Hello", priority=5, user="alice")
        async with client.admit(model="my-own-llm", workload="chat", user="alice") as ticket:
            ...  # call your own model server: Iris only hands out the slot (`iris.sdk.admission`)

Delivery is at-least-once: when a worker dies mid-answer the broker re-runs the request with a higher
`attempt`. Where the answer's progress was stored (`runtime.progress`) the re-run continues it: its chunks
say `continued`, their indexes go on, and `generate` yields none twice, so the reader sees one answer.
Otherwise chunks start again at index 0 (not `continued`): a reader that sees `attempt` grow on such a
chunk restarts its answer. `complete` returns the final `Result`, whose text is one whole answer. Labels that
are not valid subject tokens (`model`, `workload`, `user`) are mapped to valid ones.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeout

from iris.sdk.admission import Admission, AdmissionLabels, admission
from runtime.connection import connect
from runtime.exchange import Exchange, RequestEnvelope, build_envelope
from schemas import headers as h
from schemas.errors import DuplicateRequest, InvalidRequest, NoCapacity
from schemas.messages import ChatMessage, Chunk, GenerateRequest, QueueUpdate, Result, heartbeat_decoder
from schemas.subjects import HEARTBEAT_FILTER, to_token

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.12

__all__ = ["Admission", "Client", "DuplicateRequest", "Generation"]


class Generation:
    """One request: iterate it for chunks; `result` and `queue_updates` fill in as replies arrive. The
    model, when not given, is resolved from worker heartbeats as iteration starts."""

    def __init__(self, client: Client, model: str | None, build: Callable[[str], RequestEnvelope]) -> None:
        self._client, self._model, self._build = client, model, build
        self.exchange: Exchange | None = None

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        async for chunk in await self._exchange():
            yield chunk

    async def _exchange(self) -> Exchange:
        if self.exchange is None:
            envelope = self._build(await self._client.resolve_model(self._model))
            self.exchange = Exchange(self._client.nc, envelope)
        return self.exchange

    async def finish(self) -> Result:
        return await (await self._exchange()).finish()

    async def cancel(self) -> None:
        """Drop the request (queued: leaves at once; running: stops within a token, slot freed)."""
        if self.exchange is not None:
            await self.exchange.cancel()

    @property
    def result(self) -> Result | None:
        return None if self.exchange is None else self.exchange.result

    @property
    def queue_updates(self) -> list[QueueUpdate]:
        return [] if self.exchange is None else self.exchange.queue_updates

    @property
    def request_id(self) -> str | None:
        return None if self.exchange is None else self.exchange.envelope.request_id


class Client:
    def __init__(self, nc: NATS, *, owns_connection: bool = False) -> None:
        self.nc = nc
        self._owns = owns_connection
        self._default_model: str | None = None

    @classmethod
    async def connect(cls, url: str = "nats://127.0.0.1:4222", **options: Any) -> Client:
        name = options.pop("name", "iris-client")
        return cls(await connect(url, name, **options), owns_connection=True)

    async def close(self) -> None:
        if self._owns and not self.nc.is_closed:
            await self.nc.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def models(self, wait_s: float = 3.0, listen_s: float = 1.2) -> list[str]:
        """Models with a live worker: heartbeats heard for `listen_s` after the first (within `wait_s`)."""
        seen: set[str] = set()
        sub = await self.nc.subscribe(HEARTBEAT_FILTER)
        try:
            end = time.monotonic() + wait_s
            while (left := end - time.monotonic()) > 0:
                try:
                    msg = await sub.next_msg(timeout=left)
                except NatsTimeout:
                    break
                if not seen:
                    end = min(end, time.monotonic() + listen_s)  # one beat interval hears every worker
                seen.add(heartbeat_decoder.decode(msg.data).model)
        finally:
            await sub.unsubscribe()
        return sorted(seen)

    async def resolve_model(self, model: str | None) -> str:
        if model:
            return to_token(model)
        if self._default_model is None:
            models = await self.models()
            if not models:
                raise NoCapacity("no worker is serving any model", retry_after_s=1.0)
            if len(models) > 1:
                raise InvalidRequest(f"several models are served ({', '.join(models)}); pass model=...")
            self._default_model = models[0]
        return self._default_model

    def generate(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[ChatMessage | dict[str, str]] | None = None,
        model: str | None = None,
        workload: str = "default",
        priority: int = 1,
        user: str | None = None,
        end_user: str | None = None,
        deadline_s: float = h.DEFAULT_DEADLINE_S,
        tokens: int | None = None,
        idempotency_key: str | None = None,
        max_tokens: int = 256,
        min_tokens: int = 0,
        temperature: float = 0.8,
        top_p: float = 0.95,
        stop: Sequence[str] = (),
        seed: int | None = None,
        stream: bool = True,
    ) -> Generation:
        request = GenerateRequest(
            prompt=prompt,
            messages=_chat(messages),
            max_tokens=max_tokens,
            min_tokens=min_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=list(stop),
            seed=seed,
            stream=stream,
        )

        def build(resolved_model: str) -> RequestEnvelope:
            return build_envelope(
                self.nc,
                request,
                model=resolved_model,
                workload=to_token(workload),
                priority=priority,
                user=to_token(user) if user else None,
                end_user=to_token(end_user) if end_user else None,
                deadline_s=deadline_s,
                tokens=tokens,
                idempotency_key=idempotency_key,
            )

        if model:
            build(to_token(model))  # fail fast on bad input, before anything is awaited
        return Generation(self, model, build)

    async def complete(self, prompt: str | None = None, **options: Any) -> Result:
        """Run a request to its end and return the final `Result`. No chunks are streamed (the worker sends
        only the result) unless `stream=True` is passed."""
        options.setdefault("stream", False)
        return await self.generate(prompt, **options).finish()

    def admit(self, *, model: str, **labels: Unpack[AdmissionLabels]) -> Admission:
        """A slot for a model you call yourself: `async with client.admit(...) as ticket:` waits in the fair
        queue for it and releases it on exit (labels as `iris.sdk.admission.admission` takes them)."""
        return admission(self.nc, model=model, **labels)


def _chat(messages: Sequence[ChatMessage | dict[str, str]] | None) -> list[ChatMessage] | None:
    try:
        return None if messages is None else [msgspec.convert(m, ChatMessage) for m in messages]
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"invalid messages: {exc}") from None
