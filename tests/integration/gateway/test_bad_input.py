"""Bad input over HTTP: each case gets its own status, `X-Iris-Error`, and a body naming the problem; the
gateway never answers 500 to client input and still serves a good request afterwards."""

from __future__ import annotations

import json
from typing import Any

import httpx

from gpu_worker.engines.fake import FakeEngine
from iris.launch.nats_server import NatsServer
from tests.integration.gateway_stack import OPEN_KEY, PAID_KEY, gateway, metric
from tests.integration.services import broker, worker

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
OLLAMA = {"model": "fake", "prompt": "hi"}
BIG = 4 * 1024**2 + 1

# (method, path, headers, body (bytes, or JSON-able), status, error code, text the body must contain)
CASES: list[tuple[str, str, dict[str, str], Any, int, str, str]] = [
    ("POST", "/api/generate", {}, b"{bad json", 400, "invalid_request", "malformed JSON"),
    ("POST", "/v1/chat/completions", {}, b"", 400, "invalid_request", "body is empty"),
    ("POST", "/v1/chat/completions", {}, b"[1, 2]", 400, "invalid_request", "Expected `object`"),
    (
        "POST",
        "/api/generate",
        {},
        {**OLLAMA, "options": {"temperature": "hot"}},
        400,
        "invalid_request",
        "$.options.temperature",
    ),
    ("POST", "/api/generate", {}, {**OLLAMA, "options": {"num_predict": 0}}, 400, "invalid_request", "num_predict"),
    ("POST", "/api/chat", {}, {"model": "fake", "messages": "hi"}, 400, "invalid_request", "$.messages"),
    (
        "POST",
        "/api/chat",
        {},
        {"model": "fake", "messages": [{"role": "wizard", "content": "x"}]},
        400,
        "invalid_request",
        "$.messages[0].role",
    ),
    ("POST", "/api/generate", {}, {"prompt": "hi"}, 400, "invalid_request", "model is required"),
    ("POST", "/api/generate", {}, {**OLLAMA, "images": ["aGk="]}, 400, "invalid_request", "images"),
    ("POST", "/api/generate", {}, {**OLLAMA, "model": "nope"}, 404, "model_not_found", "'nope' not found"),
    ("POST", "/api/generate", {}, {**OLLAMA, "model": "a.b/c"}, 400, "invalid_request", "model must be"),
    ("POST", "/v1/chat/completions", {}, {**CHAT, "model": "missing"}, 404, "model_not_found", "'missing' not found"),
    ("POST", "/v1/chat/completions", {}, {**CHAT, "n": 3}, 400, "invalid_request", "$.n"),
    ("POST", "/v1/chat/completions", {}, {**CHAT, "max_tokens": -5}, 400, "invalid_request", "$.max_tokens"),
    ("POST", "/v1/chat/completions", {}, {**CHAT, "temperature": 9}, 400, "invalid_request", "$.temperature"),
    ("POST", "/v1/chat/completions", {}, {**CHAT, "messages": []}, 400, "invalid_request", "$.messages"),
    ("POST", "/v1/chat/completions", {}, {**CHAT, "stop": ["x"] * 20}, 400, "invalid_request", "$.stop"),
    ("POST", "/v1/chat/completions", {}, {**CHAT, "tools": [{"type": "function"}]}, 400, "invalid_request", "tools"),
    (
        "POST",
        "/v1/chat/completions",
        {},
        {**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        400,
        "invalid_request",
        "$.messages[0].content[0]",
    ),
    (
        "POST",
        "/v1/chat/completions",
        {},
        {**CHAT, "messages": [{"role": "user", "content": "x" * 600_000}]},
        400,
        "invalid_request",
        "$.messages[0].content",
    ),
    ("POST", "/v1/completions", {}, {"model": "fake", "prompt": ["a", "b"]}, 400, "invalid_request", "one prompt"),
    ("POST", "/v1/completions", {}, b"x" * BIG, 413, "payload_too_large", "larger than"),
    (
        "POST",
        "/v1/chat/completions",
        {"Authorization": "Bearer wrong-key-123"},
        CHAT,
        401,
        "unauthorized",
        "invalid API key",
    ),
    ("POST", "/v1/chat/completions", {"Authorization": "Basic abc"}, CHAT, 401, "unauthorized", "Bearer"),
    ("POST", "/api/chat", {"X-Iris-Priority": "high"}, CHAT, 400, "invalid_request", "X-Iris-Priority"),
    ("POST", "/api/chat", {"X-Iris-Priority": "0"}, CHAT, 400, "invalid_request", "X-Iris-Priority"),
    ("POST", "/api/chat", {"X-Iris-Priority": "2"}, CHAT, 403, "forbidden", "above this key's maximum"),
    (
        "POST",
        "/api/chat",
        {"Authorization": f"Bearer {PAID_KEY}", "X-Iris-Priority": "6"},
        CHAT,
        403,
        "forbidden",
        "maximum 5",
    ),
    ("POST", "/api/chat", {"X-Iris-Workload": "paid"}, CHAT, 403, "forbidden", "workload 'paid'"),
    (
        "POST",
        "/api/chat",
        {"Authorization": f"Bearer {OPEN_KEY}", "X-Iris-Workload": "paid"},
        CHAT,
        403,
        "forbidden",
        "workload",
    ),
    ("POST", "/api/chat", {"X-Iris-Workload": "a b"}, CHAT, 400, "invalid_request", "X-Iris-Workload"),
    ("POST", "/api/chat", {"X-Iris-Deadline": "-1"}, CHAT, 400, "invalid_request", "X-Iris-Deadline"),
    ("POST", "/api/chat", {"X-Iris-Deadline": "soon"}, CHAT, 400, "invalid_request", "X-Iris-Deadline"),
    ("POST", "/api/chat", {"X-Iris-Deadline": "nan"}, CHAT, 400, "invalid_request", "X-Iris-Deadline"),
    ("GET", "/api/generate", {}, None, 405, "invalid_request", "Method Not Allowed"),
    ("GET", "/v1/embeddings", {}, None, 404, "invalid_request", "Not Found"),
]


async def test_bad_input_gets_typed_errors_never_500(nats_server: NatsServer) -> None:
    url = nats_server.url
    async with broker(url), worker(url, FakeEngine("fake"), "w1"), gateway(url, "fake") as gw:
        async with httpx.AsyncClient(base_url=gw.http.url, timeout=30) as http:  # type: ignore[union-attr]
            for method, path, headers, body, status, code, text in CASES:
                content = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
                response = await http.request(method, path, headers=headers, content=content)
                case = f"{method} {path} {headers} {str(body)[:80]}"
                assert response.status_code == status, f"{case}: {response.status_code} {response.text[:200]}"
                assert response.headers["x-iris-error"] == code, case
                assert text in response.text, f"{case}: {response.text[:300]}"
                if path.startswith("/v1/"):
                    assert response.json()["error"]["code"] == code, case
            good = await http.post("/api/chat", json={**CHAT, "stream": False, "options": {"num_predict": 3}})
            assert good.status_code == 200 and good.json()["eval_count"] == 3
            assert (
                metric(
                    gw,
                    "iris_gateway_requests_total",
                    api="openai",
                    route="/v1/chat/completions",
                    status="500",
                    code="internal",
                )
                == 0
            )
            assert (
                metric(
                    gw, "iris_gateway_requests_total", api="ollama", route="/api/chat", status="500", code="internal"
                )
                == 0
            )
