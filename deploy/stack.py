"""The compose stack seen from the host: its containers (docker), who leads (the broker leader key, the
stream's cluster), and waiting on those facts. Used by deploy/chaos.py."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.js.errors import APIError, KeyNotFoundError

from schemas.subjects import BROKER_BUCKET, LEADER_KEY, REQUEST_STREAM


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout.strip()


def container(service: str) -> str:
    return docker(
        "ps", "-aq", "--filter", "label=com.docker.compose.project=iris",
        "--filter", f"label=com.docker.compose.service={service}",
    ).splitlines()[0]  # fmt: skip


def crash(service: str) -> None:
    """SIGKILL the container's process from the host: a crash as the engine sees it. `docker kill` is an
    operator's stop to Docker 20.10 (it marks the container manually stopped), so no restart policy applies."""
    pid = docker("inspect", "--format", "{{.State.Pid}}", container(service))
    subprocess.run(["kill", "-9", pid], check=True)


def state(service: str) -> dict[str, Any]:
    info = json.loads(docker("inspect", container(service)))[0]
    health = info["State"].get("Health", {}).get("Status", "none")
    return {"restarts": info["RestartCount"], "running": info["State"]["Running"], "health": health}


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 180.0) -> float:
    """Seconds until `check` holds: the facts are in docker and NATS, so this polls them."""
    start = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"not within {timeout_s:.0f} s: {what}")
        await asyncio.sleep(0.2)


async def wait_back(service: str, restarts_before: int) -> float:
    """Seconds until the killed service was restarted by docker and reports healthy again."""

    async def back() -> bool:
        now = state(service)
        return bool(now["restarts"] > restarts_before and now["running"] and now["health"] in ("healthy", "none"))

    return await until(back, f"{service} restarted and healthy")


async def leader_id(nc: NATS) -> str:
    """The id of the broker holding the leader key ("" between terms or while NATS elects)."""
    kv = await nc.jetstream().key_value(BROKER_BUCKET)
    try:
        entry = await kv.get(LEADER_KEY)
    except (KeyNotFoundError, nats.errors.TimeoutError):
        return ""
    return (entry.value or b"").decode()


async def leading_broker(nc: NATS) -> str:
    """The compose service of the leading broker ("" between terms)."""
    broker_id = await leader_id(nc)
    return service_of(broker_id) if broker_id else ""


def service_of(process_id: str) -> str:
    """The compose service of a broker or worker id `<host>-<pid>-<hex>` (the host name is the service)."""
    return process_id.rsplit("-", 2)[0]


async def stream_cluster(nc: NATS) -> dict[str, Any]:
    try:
        info = await nc.jetstream().stream_info(REQUEST_STREAM)
    except (APIError, nats.errors.TimeoutError):  # no leader for a moment after a node loss
        return {"leader": None, "replicas": {}}
    cluster = info.cluster
    assert cluster is not None, "IRIS_REQUESTS is not clustered"
    replicas = {peer.name: bool(peer.current) for peer in cluster.replicas or []}
    return {"leader": cluster.leader, "replicas": replicas}


async def broker_leads(service: str) -> bool:
    probe = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9101/metrics', timeout=2).read().decode())"
    metrics = docker("exec", container(service), "python", "-c", probe)
    return "iris_broker_leader 1.0" in metrics
