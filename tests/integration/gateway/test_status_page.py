"""The status page as a client meets it: `/` sends browsers to `/status` and keeps answering API probes;
the page, its files and its event stream are served, the stream carries the broker's own numbers and the
workers' heartbeats; off loopback with keys the page and the stream answer 401 without a key (with the
challenge a browser answers); an open stream never holds up the gateway's stop."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from gateway.http.status.routes import STATIC_TYPES
from gateway.service import GatewayService
from gpu_worker.engines.fake import FakeEngine
from iris.launch.nats_server import NatsServer
from iris.sdk.client import Client
from tests.integration.gateway_stack import OPEN_KEY, gateway
from tests.integration.services import broker, eventually, worker


def base_url(gw: GatewayService) -> str:
    assert gw.http is not None
    return gw.http.url.replace("0.0.0.0", "127.0.0.1")


async def events(response: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    """(event, data) from a server-sent-events response."""
    event = ""
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            yield event, json.loads(line[6:])


async def test_page_files_and_stream_show_the_brokers_numbers(nats_server: NatsServer) -> None:
    url = nats_server.url
    async with (
        broker(url, stats_s=0.2),
        worker(url, FakeEngine("fake", slots=2, tokens_per_s=50), "w1", slots=2),
        gateway(url, "fake") as gw,
        httpx.AsyncClient(base_url=base_url(gw), timeout=30) as http,
        await Client.connect(url) as client,
    ):
        browser = await http.get("/", headers={"Accept": "text/html,application/xhtml+xml"})
        assert browser.status_code == 307 and browser.headers["location"] == "/status"
        probe = await http.get("/")  # what Ollama clients send: unchanged
        assert probe.status_code == 200 and "Iris is running" in probe.text
        page = await http.get("/status")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        for name, media in STATIC_TYPES.items():
            served = await http.get(f"/status/static/{name}")
            assert served.status_code == 200 and served.headers["content-type"] == media and served.content
            assert f"status/static/{name}" in page.text
        assert (await http.get("/status/static/../app.py")).status_code == 404

        answers = [client.complete(f"q{i}", model="fake", max_tokens=40, workload="batch") for i in range(8)]
        running = asyncio.gather(*answers)
        seen: dict[str, Any] = {}
        async with http.stream("GET", "/status/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            async for event, data in events(stream):
                seen.setdefault(event, data)
                rows = {(r["model"], r["workload"]): r for r in data.get("workloads", [])}
                if event == "snapshot" and rows.get(("fake", "batch"), {}).get("running") == 2:
                    seen["busy"] = data
                    break
        await running
        assert list(seen)[:2] == ["history", "snapshot"]
        busy = seen["busy"]
        assert busy["broker"]["policy"] == "wfq" and busy["broker"]["age_s"] < 5
        assert [(w["worker"], w["slots"], w["device"]) for w in busy["workers"]] == [("w1", 2, "CPU")]
        assert "q1" not in json.dumps(busy)  # no prompt text, ever

        async def history_has_batch() -> bool:
            snapshot = (await http.get("/status/snapshot")).json()
            return (
                any(r["workload"] == "batch" for r in snapshot["workloads"])
                and gw.status is not None
                and ("fake/batch" in gw.status.board.history)
            )

        await eventually(history_has_batch, 10, "the batch workload in the snapshot and history")


async def test_off_loopback_the_page_and_stream_need_a_key(nats_server: NatsServer) -> None:
    url = nats_server.url
    async with (
        broker(url),
        worker(url, FakeEngine("fake"), "w1"),
        gateway(url, "fake", http_host="0.0.0.0") as gw,
        httpx.AsyncClient(base_url=base_url(gw), timeout=30) as http,
    ):
        basic = "Basic " + base64.b64encode(f"viewer:{OPEN_KEY}".encode()).decode()
        for path in ("/status", "/status/events", "/status/snapshot"):
            for authorization in (
                None,
                "Bearer wrong-key-0123456789",
                "Basic !!!",
                "Basic " + base64.b64encode(b"x:y").decode(),
            ):
                headers = {"Authorization": authorization} if authorization else {}
                refused = await http.get(path, headers=headers)
                assert refused.status_code == 401, f"{path} {authorization}: {refused.status_code}"
                assert refused.headers["x-iris-error"] == "unauthorized"
                assert refused.headers["www-authenticate"].startswith('Basic realm="Iris status"')
        assert (await http.get("/status", headers={"Authorization": f"Bearer {OPEN_KEY}"})).status_code == 200
        assert (await http.get("/status/snapshot", headers={"Authorization": basic})).status_code == 200
        async with http.stream("GET", "/status/events", headers={"Authorization": basic}) as stream:
            assert stream.status_code == 200
            first = await anext(events(stream))
            assert first[0] == "history"
        assert (await http.get("/status/static/status.js")).status_code == 200  # the page's code is no secret
        refusals = [(r.route, r.status) for r in gw.metrics.refusals.kept]
        assert ("/status/events", 401) in refusals


async def test_an_open_stream_does_not_hold_up_the_stop(nats_server: NatsServer) -> None:
    url = nats_server.url
    async with broker(url), worker(url, FakeEngine("fake"), "w1"):
        gw_context = gateway(url, "fake")
        gw = await gw_context.__aenter__()
        http = httpx.AsyncClient(base_url=base_url(gw), timeout=30)
        ended = asyncio.Event()

        async def read() -> None:
            async with http.stream("GET", "/status/events") as stream:
                async for _ in stream.aiter_lines():
                    pass
            ended.set()

        reader = asyncio.ensure_future(read())
        await eventually(lambda: _viewers(gw), 10, "the stream to open")
        await asyncio.wait_for(gw_context.__aexit__(None, None, None), 10)  # the HTTP server waits up to 30 s
        await asyncio.wait_for(ended.wait(), 5)
        await reader
        await http.aclose()


async def _viewers(gw: GatewayService) -> bool:
    return gw.status is not None and len(gw.status.subscribers) == 1
