"""Cancels that are never lost: stream `IRIS_CANCELS` keeps every `iris.cancel[.<owner>].<request id>` publish
for as long as a request may live (`MAX_DEADLINE_S`), and every broker and worker reads it into a `CancelBook`.
Who may cancel is checked where a cancel is applied (`schemas.reply_subjects.may_cancel`): an owned cancel
stops only requests whose replies go to its owner's inbox.

A client publishes a cancel whenever it likes: before the broker's consumer reached its request in a deep
backlog, while an offer is in flight, while no broker leads. JetStream stores it whoever listens, so the
leader checks the book when it indexes a request and before each offer, a worker when it accepts a lease
and while it runs one, and a new term reads the whole stream before its first request. The stream holds
one message per request id (the latest), headers only are read, and entries age out of the book as they
age out of the stream. The feed that reads the stream into a book is `runtime.cancels.CancelFeed`.
"""

from __future__ import annotations

import heapq

from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from schemas.headers import MAX_DEADLINE_S
from schemas.reply_subjects import may_cancel
from schemas.subjects import CANCEL_FILTER, CANCEL_STREAM

CANCEL_MEMORY_S = MAX_DEADLINE_S  # no request lives longer: its deadline is at most this far from its publish


def cancel_stream_config(replicas: int, max_msgs: int = 1_000_000) -> StreamConfig:
    return StreamConfig(
        name=CANCEL_STREAM,
        subjects=[CANCEL_FILTER],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=CANCEL_MEMORY_S,
        max_msgs_per_subject=1,
        max_msgs=max_msgs,
        max_bytes=256 * 1024**2,
        discard=DiscardPolicy.OLD,
        allow_direct=True,
        num_replicas=replicas,
    )


class CancelBook:
    """Pure: the cancels of the last `CANCEL_MEMORY_S`, by request id and who sent them (owner None: the
    plain `iris.cancel.<id>`), each until it ages out."""

    def __init__(self, memory_ms: int = int(CANCEL_MEMORY_S * 1000)) -> None:
        self.memory_ms = memory_ms
        self._expires_ms: dict[str, dict[str | None, int]] = {}  # request id → owner → expiry
        self._expiry_order: list[tuple[int, str, str]] = []  # heap of (expires_ms, request id, owner or ""), lazy

    def add(self, request_id: str, cancelled_ms: int, owner: str | None = None) -> None:
        expires_ms = cancelled_ms + self.memory_ms
        owners = self._expires_ms.setdefault(request_id, {})
        if expires_ms > owners.get(owner, 0):
            owners[owner] = expires_ms
            heapq.heappush(self._expiry_order, (expires_ms, request_id, owner or ""))

    def cancelled(self, request_id: str, reply_to: str) -> bool:
        """Whether a cancel its owner may send (`may_cancel`) stops the request replying to `reply_to`."""
        return any(may_cancel(owner, reply_to) for owner in self._expires_ms.get(request_id, ()))

    def forget_expired(self, now_ms: int) -> None:
        while self._expiry_order and self._expiry_order[0][0] <= now_ms:
            expires_ms, request_id, owner_token = heapq.heappop(self._expiry_order)
            owners = self._expires_ms.get(request_id, {})
            owner = owner_token or None
            if owners.get(owner) == expires_ms:
                del owners[owner]
                if not owners:
                    del self._expires_ms[request_id]

    def __len__(self) -> int:
        return len(self._expires_ms)

    def __contains__(self, request_id: object) -> bool:
        """Some cancel for this request id is remembered (whoever may send it)."""
        return request_id in self._expires_ms
