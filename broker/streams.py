"""Provision streams `IRIS_REQUESTS`, `IRIS_DLQ`, `IRIS_CANCELS`, `IRIS_ANSWERS` and KV buckets
`IRIS_MODELS`, `IRIS_LEASES`, idempotently.

Creating what exists is a no-op; an existing stream whose config differs is updated in place, so a
restarted or second broker never fights the first over settings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError, ServerError, ServiceUnavailableError
from nats.js.kv import KeyValue

from broker.config import BrokerConfig
from schemas.answers import answer_stream_config
from schemas.cancels import cancel_stream_config
from schemas.model_cards import model_bucket_config
from schemas.subjects import DLQ_FILTER, DLQ_STREAM, LEASE_BUCKET, MODEL_BUCKET, REQUEST_FILTER, REQUEST_STREAM

T = TypeVar("T")
NO_SUITABLE_PEERS = 10005  # JetStream's err_code (400) when it cannot place a stream's replicas


def request_stream_config(config: BrokerConfig) -> StreamConfig:
    return _file_stream(
        config,
        REQUEST_STREAM,
        REQUEST_FILTER,
        max_msgs=config.max_msgs,
        max_bytes=config.max_bytes,
        discard=DiscardPolicy.NEW,
        allow_msg_ttl=True,
    )


def dlq_stream_config(config: BrokerConfig) -> StreamConfig:
    """Dead letters are kept for `dlq_max_age_s`; when `dlq_max_bytes` is reached the oldest go, so a
    flood of garbage never stops a new dead letter from being kept."""
    return _file_stream(
        config,
        DLQ_STREAM,
        DLQ_FILTER,
        max_age=config.dlq_max_age_s,
        max_bytes=config.dlq_max_bytes,
        discard=DiscardPolicy.OLD,
    )


def _file_stream(config: BrokerConfig, name: str, subject: str, **limits: Any) -> StreamConfig:
    """A file-backed limits stream with the broker's dedupe window, direct gets and replicas."""
    return StreamConfig(
        name=name,
        subjects=[subject],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=config.duplicate_window_s,
        allow_direct=True,
        num_replicas=config.replicas,
        **limits,
    )


async def until_available(action: Callable[[], Awaitable[T]], timeout_s: float = 60.0) -> T:
    """Retry while JetStream is still electing its leaders (a cluster just started or lost a node), or
    cannot place the replicas yet (a fresh cluster's meta leader has not heard from every peer)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            return await action()
        except (ServiceUnavailableError, ServerError, NatsTimeout, NoRespondersError, BadRequestError) as exc:
            if isinstance(exc, BadRequestError) and exc.err_code != NO_SUITABLE_PEERS:
                raise
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)


async def ensure_streams(js: JetStreamContext, config: BrokerConfig) -> None:
    """The request stream, the dead-letter stream, the cancel stream, the answer stream and the model-card
    bucket (before the lease bucket, which workers wait for)."""
    await ensure_request_stream(js, config)
    await ensure_dlq_stream(js, config)
    await until_available(lambda: _ensure_stream(js, cancel_stream_config(config.replicas)))
    await ensure_answer_stream(js, config)
    await until_available(lambda: _ensure_model_bucket(js, config))


async def ensure_request_stream(js: JetStreamContext, config: BrokerConfig) -> None:
    await until_available(lambda: _ensure_stream(js, request_stream_config(config)))


async def ensure_dlq_stream(js: JetStreamContext, config: BrokerConfig) -> None:
    await until_available(lambda: _ensure_stream(js, dlq_stream_config(config)))


async def ensure_answer_stream(js: JetStreamContext, config: BrokerConfig) -> None:
    """Final replies, kept as long as their idempotency keys are remembered (`schemas.answers`)."""
    wanted = answer_stream_config(config.replicas, config.duplicate_window_s, config.answers_max_bytes)
    await until_available(lambda: _ensure_stream(js, wanted))


async def ensure_lease_bucket(js: JetStreamContext, config: BrokerConfig) -> KeyValue:
    return await until_available(lambda: _ensure_lease_bucket(js, config))


async def _ensure_stream(js: JetStreamContext, wanted: StreamConfig) -> None:
    assert wanted.name is not None
    try:
        await js.stream_info(wanted.name)
    except NotFoundError:
        try:
            await js.add_stream(wanted)
            return
        except BadRequestError as exc:
            if exc.err_code == NO_SUITABLE_PEERS:
                raise  # not created: until_available tries again
            # else another broker created it between our two calls
    await js.update_stream(wanted)


async def _ensure_model_bucket(js: JetStreamContext, config: BrokerConfig) -> KeyValue:
    try:
        return await js.key_value(MODEL_BUCKET)
    except NotFoundError:
        return await js.create_key_value(model_bucket_config(config.replicas))


async def _ensure_lease_bucket(js: JetStreamContext, config: BrokerConfig) -> KeyValue:
    """Leases are one key per stream sequence; the TTL ages out delete markers of finished leases."""
    try:
        return await js.key_value(LEASE_BUCKET)
    except NotFoundError:
        return await js.create_key_value(
            KeyValueConfig(
                bucket=LEASE_BUCKET,
                history=1,
                ttl=config.lease_ttl_s,
                storage=StorageType.FILE,
                replicas=config.replicas,
            )
        )
