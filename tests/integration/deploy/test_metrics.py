"""Prometheus `/metrics` of the gateway, broker and worker, scraped while requests flow, and the broker's
stats messages that `iris top` reads."""

from __future__ import annotations

import asyncio

import httpx
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from prometheus_client.parser import text_string_to_metric_families

from gpu_worker.engines.fake import FakeEngine
from iris.launch.nats_server import NatsServer, free_port
from schemas.messages import broker_stats_decoder
from schemas.subjects import BROKER_STATS_SUBJECT
from tests.integration.gateway_stack import gateway
from tests.integration.services import broker, eventually, worker

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 5}}


async def scrape(http: httpx.AsyncClient, url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = (await http.get(url)).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


async def check_three_requests_counted(http: httpx.AsyncClient, broker_url: str, worker_url: str, base: str) -> None:
    """Three answers of 5 tokens each, as the broker, the worker and the gateway count them."""
    after_broker = await scrape(http, f"{broker_url}/metrics")
    assert value(after_broker, "iris_broker_queue_wait_seconds_count", model="fake") == 3
    assert value(after_broker, "iris_broker_actual_tokens_total", workload="default") > 3 * 5
    after_worker = await scrape(http, f"{worker_url}/metrics")
    assert value(after_worker, "iris_worker_tokens_generated_total", model="fake") == 15
    assert value(after_worker, "iris_worker_requests_total", outcome="length") == 3
    assert value(after_worker, "iris_worker_time_to_first_token_seconds_count") == 3
    gateway_samples = await scrape(http, f"{base}/metrics")
    assert value(gateway_samples, "iris_gateway_requests_total", route="/api/chat", status="200") == 3
    assert value(gateway_samples, "iris_gateway_completion_tokens_total", model="fake") == 15


async def test_counters_move_as_requests_flow(nats_server: NatsServer, nc: NATS) -> None:
    url = nats_server.url
    broker_port, worker_port = free_port(), free_port()
    slow = FakeEngine("fake", tokens_per_s=10)
    stats_seen = []

    async def on_stats(msg: Msg) -> None:
        stats_seen.append(broker_stats_decoder.decode(msg.data))

    await nc.subscribe(BROKER_STATS_SUBJECT, cb=on_stats)
    async with (
        broker(url, metrics_port=broker_port, stats_s=0.2),
        worker(url, slow, "w1", metrics_port=worker_port),
        gateway(url, "fake") as gw,
        httpx.AsyncClient(timeout=30) as http,
    ):
        base, broker_url, worker_url = gw.http.url, f"http://127.0.0.1:{broker_port}", f"http://127.0.0.1:{worker_port}"  # type: ignore[union-attr]
        before = await scrape(http, f"{broker_url}/metrics")
        assert value(before, "iris_broker_requests_total", outcome="completed") == 0
        running = asyncio.ensure_future(http.post(f"{base}/api/chat", json={**CHAT, "stream": False}))

        async def busy() -> bool:
            samples = await scrape(http, f"{worker_url}/metrics")
            return value(samples, "iris_worker_busy_slots", worker="w1") == 1

        await eventually(busy, what="the worker's busy-slot gauge")
        during = await scrape(http, f"{broker_url}/metrics")
        assert value(during, "iris_broker_requests_total", outcome="started", workload="default") == 1
        assert (await running).status_code == 200
        for _ in range(2):
            assert (await http.post(f"{base}/api/chat", json={**CHAT, "stream": False})).status_code == 200

        async def counted() -> bool:
            samples = await scrape(http, f"{broker_url}/metrics")
            return value(samples, "iris_broker_requests_total", outcome="completed", priority="1") == 3

        await eventually(counted, what="three completed requests at the broker")
        await check_three_requests_counted(http, broker_url, worker_url, base)

        async def stats_show_it() -> bool:
            rows = [row for stats in stats_seen for row in stats.workloads if row.workload == "default"]
            return any(row.started == 3 and row.share == 1.0 for row in rows)

        await eventually(stats_show_it, what="broker stats with the three requests")
