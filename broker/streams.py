"""Provision stream `IRIS_REQUESTS` and KV bucket `IRIS_LEASES`, idempotently.

Creating what exists is a no-op; an existing stream whose config differs is updated in place, so a
restarted or second broker never fights the first over settings.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from broker.config import BrokerConfig
from schemas.subjects import LEASE_BUCKET, REQUEST_FILTER, REQUEST_STREAM


def request_stream_config(config: BrokerConfig) -> StreamConfig:
    return StreamConfig(
        name=REQUEST_STREAM,
        subjects=[REQUEST_FILTER],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_msgs=config.max_msgs,
        max_bytes=config.max_bytes,
        discard=DiscardPolicy.NEW,
        duplicate_window=config.duplicate_window_s,
        allow_direct=True,
        allow_msg_ttl=True,
        num_replicas=config.replicas,
    )


async def ensure_request_stream(js: JetStreamContext, config: BrokerConfig) -> None:
    wanted = request_stream_config(config)
    try:
        await js.stream_info(REQUEST_STREAM)
    except NotFoundError:
        try:
            await js.add_stream(wanted)
            return
        except BadRequestError:
            pass  # another broker created it between our two calls
    await js.update_stream(wanted)


async def ensure_lease_bucket(js: JetStreamContext, config: BrokerConfig) -> KeyValue:
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
