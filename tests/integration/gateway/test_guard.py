"""The HTTP gateway as a hostile browser or client meets it: foreign origins, rebinding hosts and non-JSON
bodies are refused; a wrong key is answered before its body is read; bodies around NATS's `max_payload`
get 200 or 413, never 500, and never cost the gateway its NATS connection (other answers go on)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from gateway.http.guard import ENVELOPE_HEADER_ROOM_BYTES
from gateway.service import GatewayService
from gpu_worker.engines.fake import FakeEngine
from iris.launch.nats_server import NatsServer
from tests.integration.gateway_stack import gateway
from tests.integration.services import broker, worker

CHAT = {
    "model": "fake",
    "messages": [{"role": "user", "content": "hi"}],
    "stream": False,
    "options": {"num_predict": 2},
}
ALLOWED_ORIGIN = "http://localhost:3000"


def base_url(gw: GatewayService) -> str:
    assert gw.http is not None
    return gw.http.url


async def test_browsers_and_rebinding_hosts_are_refused(nats_server: NatsServer) -> None:
    url = nats_server.url
    async with (
        broker(url),
        worker(url, FakeEngine("fake"), "w1"),
        gateway(url, "fake", allowed_origins=[ALLOWED_ORIGIN]) as gw,
        httpx.AsyncClient(base_url=base_url(gw), timeout=30) as http,
    ):
        body = json.dumps(CHAT).encode()
        json_type = {"Content-Type": "application/json"}
        refused: list[tuple[dict[str, str], int, str, str]] = [
            ({**json_type, "Origin": "https://evil.example"}, 403, "forbidden", "allowed_origins"),
            ({**json_type, "Origin": "null"}, 403, "forbidden", "allowed_origins"),
            ({**json_type, "Host": "evil.example:8080"}, 403, "forbidden", "allowed_hosts"),
            ({**json_type, "Host": "attacker.rebind.network"}, 403, "forbidden", "allowed_hosts"),
            ({"Content-Type": "text/plain"}, 415, "unsupported_media_type", "application/json"),
            ({"Content-Type": "multipart/form-data; boundary=x"}, 415, "unsupported_media_type", "application/json"),
            (  # a form post from a page: the Fetch metadata gives the browser away even without an Origin
                {"Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Site": "cross-site"},
                415,
                "unsupported_media_type",
                "application/json",
            ),
        ]
        for path in ("/api/chat", "/v1/chat/completions"):
            for headers, status, code, text in refused:
                response = await http.post(path, content=body, headers=headers)
                case = f"{path} {headers}"
                assert response.status_code == status, f"{case}: {response.status_code} {response.text[:200]}"
                assert response.headers["x-iris-error"] == code and text in response.text, case
        assert (await http.get("/api/tags", headers={"Origin": "https://evil.example"})).status_code == 403
        preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        assert (await http.options("/api/chat", headers=preflight)).status_code == 403

        served: list[dict[str, str]] = [
            json_type,
            {"Content-Type": "application/json; charset=utf-8", "Host": "localhost:11434"},
            {"Content-Type": "application/x-www-form-urlencoded"},  # `curl -d '{...}'`
            {**json_type, "Origin": ALLOWED_ORIGIN},
            {**json_type, "Host": "127.0.0.1"},
            {**json_type, "Host": "[::1]:8080"},
        ]
        for headers in served:
            response = await http.post("/api/chat", content=body, headers=headers)
            assert response.status_code == 200, f"{headers}: {response.text[:200]}"
        allowed = await http.post("/api/chat", content=body, headers={**json_type, "Origin": ALLOWED_ORIGIN})
        assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        preflight = {"Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "POST"}
        answer = await http.options("/api/chat", headers=preflight)
        assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == ALLOWED_ORIGIN


async def test_a_wrong_key_is_answered_before_the_body_is_read(nats_server: NatsServer) -> None:
    """4 MiB declared, 1 KiB sent, the rest never: the 401 comes anyway, so the body was not waited for."""
    url = nats_server.url
    async with broker(url), worker(url, FakeEngine("fake"), "w1"), gateway(url, "fake") as gw:
        assert gw.http is not None
        host, port = gw.http.url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        declared = 4 * 1024**2
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer wrong-key-123\r\n"
            f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
        )
        writer.write(head.encode() + b"x" * 1024)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=10)
        assert status_line.startswith(b"HTTP/1.1 401"), status_line
        writer.close()


def chat_body_of(size: int) -> bytes:
    """A valid chat body of exactly `size` bytes (each message below the per-message length limit)."""
    count = -(-size // 400_000)
    empty = len(json.dumps({**CHAT, "messages": [{"role": "user", "content": ""}] * count}))
    chars = size - empty
    contents = [chars // count + (1 if i < chars % count else 0) for i in range(count)]
    return json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * n} for n in contents]}).encode()


async def test_bodies_around_the_payload_limit_never_cost_the_connection(nats_server: NatsServer) -> None:
    url = nats_server.url
    engine = FakeEngine("fake", slots=4, tokens_per_s=40)
    async with (
        broker(url),
        worker(url, engine, "w1"),
        gateway(url, "fake") as gw,
        httpx.AsyncClient(base_url=base_url(gw), timeout=60) as http,
    ):
        assert gw._nc is not None
        limit = gw._nc.max_payload - ENVELOPE_HEADER_ROOM_BYTES

        async def stream_to_the_end() -> list[dict[str, Any]]:
            request = {**CHAT, "stream": True, "options": {"num_predict": 60}}
            async with http.stream("POST", "/api/chat", json=request) as response:
                assert response.status_code == 200
                return [json.loads(line) async for line in response.aiter_lines() if line]

        streams = [asyncio.ensure_future(stream_to_the_end()) for _ in range(3)]
        sizes = [900_000, 1_000_000, 1_100_000, limit - 1, limit, limit + 1, gw._nc.max_payload]
        for size in sizes:
            body = chat_body_of(size)
            assert len(body) == size
            response = await http.post("/api/chat", content=body, headers={"Content-Type": "application/json"})
            assert response.status_code in (200, 413), f"{size}: {response.status_code} {response.text[:200]}"
            if size > limit:
                assert response.status_code == 413 and str(limit) in response.text
            elif size <= 1_000_000:
                assert response.status_code == 200, f"{size}: {response.text[:200]}"
        for lines in await asyncio.gather(*streams):
            assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 60
        assert gw._nc.is_connected and gw._nc.stats["reconnects"] == 0
