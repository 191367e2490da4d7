"""Requests nobody would ever answer get a clear answer at once: a subject with a control character
(DEL is the one nats-server's filtered consumers skip), a deadline longer than the dedupe window (a retry
within it could run twice), and `/readyz` says not ready while no broker leads."""

from __future__ import annotations

import time

import httpx
from nats.aio.client import Client as NATS

from gpu_worker.engines.fake import FakeEngine
from iris.launch.nats_server import NatsServer
from tests.integration.gateway_stack import gateway
from tests.integration.raw_nats import good_headers, raw_request
from tests.integration.services import broker, eventually, wait_stream_empty, worker


async def test_subject_with_del_is_refused_at_once(nats_server: NatsServer, nc: NATS) -> None:
    async with broker(nats_server.url):
        # The first message of a fresh stream: the case a filtered consumer never delivers.
        reply = await raw_request(nc, "iris.req.fa\x7fke.default", b'{"prompt": "hi"}', good_headers(nc))
        assert reply["kind"] == "error" and reply["code"] == "invalid_request"
        assert "\\x7f" in str(reply["message"])
        await wait_stream_empty(nc)


async def test_deadline_past_the_dedupe_window_is_refused(nats_server: NatsServer, nc: NATS) -> None:
    async with broker(nats_server.url, duplicate_window_s=60.0):
        headers = {**good_headers(nc), "Iris-Deadline": str(int(time.time() * 1000) + 120_000)}
        reply = await raw_request(nc, "iris.req.fake.default", b'{"prompt": "hi"}', headers)
        assert reply["kind"] == "error" and reply["code"] == "invalid_request"
        assert "dedupe window" in str(reply["message"])


async def test_readyz_needs_a_leading_broker(nats_server: NatsServer) -> None:
    url = nats_server.url
    async with broker(url) as leader, worker(url, FakeEngine("fake"), "w1"), gateway(url, "fake") as api:
        assert api.http is not None
        async with httpx.AsyncClient(base_url=api.http.url, timeout=10) as http:

            async def ready() -> bool:
                return (await http.get("/readyz")).status_code == 200

            await eventually(ready, what="/readyz with a leader")
            await leader.stop()  # a clean stop hands the leader key back at once

            async def not_ready() -> bool:
                response = await http.get("/readyz")
                return response.status_code == 503 and "no broker leads" in response.json()["reason"]

            await eventually(not_ready, timeout_s=10, what="/readyz without a leader")
