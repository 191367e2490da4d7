"""`iris bench upstream`: `HttpEngine` in front of an OpenAI-compatible server: requests/s at `--clients`
concurrent requests and how many TCP connections the upstream saw.

The upstream is a separate process (Starlette on uvicorn, like the servers Iris fronts): it streams a
short SSE answer (chunked, keep-alive) and counts the distinct client connections. The engine runs with
`--clients` slots, streaming, for `--requests` requests. Run it from another checkout
(`PYTHONPATH=<checkout> python -m iris.bench.upstream`) to compare an older `HttpEngine` in the same
conditions. Prints a table and saves JSON.
"""

from __future__ import annotations

import asyncio
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from iris.bench.harness import wait_http
from iris.launch.nats_server import free_port

MODEL = "upstream-model"
WORDS = 4


def upstream_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    peers: set[tuple[str, int]] = set()

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def connections(request: Request) -> Response:
        return JSONResponse({"connections": len(peers)})

    async def completions(request: Request) -> Response:
        if request.client is not None:
            peers.add((request.client.host, request.client.port))
        await request.body()

        async def sse() -> Any:
            for i in range(WORDS):
                choice = {"index": 0, "text": f"w{i} ", "finish_reason": None}
                yield "data: " + json.dumps({"choices": [choice]}) + "\n\n"
            usage = {"prompt_tokens": 3, "completion_tokens": WORDS, "total_tokens": 3 + WORDS}
            yield "data: " + json.dumps({"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}) + "\n\n"
            yield "data: " + json.dumps({"choices": [], "usage": usage}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream")

    routes = [
        Route("/v1/models", models),
        Route("/connections", connections),
        Route("/v1/completions", completions, methods=["POST"]),
    ]
    return Starlette(routes=routes)


async def run_upstream_bench(clients: int, requests: int, out: Path) -> dict[str, Any]:
    from gpu_worker.engines.http import HttpEngine
    from gpu_worker.engines.protocol import Piece, StopSignal
    from schemas.messages import GenerateRequest

    port = free_port()
    serve = [sys.executable, "-m", "iris.bench.upstream", "--serve", str(port)]
    server = subprocess.Popen(serve, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: ASYNC220
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_http(base, "/v1/models", timeout_s=30.0)
        engine = HttpEngine(base, "openai", MODEL, MODEL, slots=clients)
        await engine.load()
        gate = asyncio.Semaphore(clients)
        request = GenerateRequest(prompt="hi", max_tokens=WORDS)

        async def one() -> int:
            async with gate:
                return sum([isinstance(e, Piece) async for e in engine.generate(request, StopSignal())])

        started = time.perf_counter()
        pieces = await asyncio.gather(*(one() for _ in range(requests)))
        elapsed_s = time.perf_counter() - started
        await engine.close()
        async with httpx.AsyncClient() as http:
            seen = (await http.get(f"{base}/connections")).json()["connections"]
    finally:
        server.terminate()
        server.wait(timeout=10)
    report = {
        "clients": clients,
        "requests": requests,
        "requests_per_s": round(requests / elapsed_s, 1),
        "upstream_connections": seen,
        "all_answered": all(p == WORDS for p in pieces),
        "python": platform.python_version(),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "upstream.json").write_text(json.dumps(report, indent=2))
    print(f"HttpEngine -> OpenAI-compatible upstream, {clients} concurrent, {requests} requests")
    print(f"  requests/s            {report['requests_per_s']}")
    print(f"  upstream connections  {seen}  (slots: {clients})")
    return report


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--serve"]:
        import uvicorn

        uvicorn.run(upstream_app(), host="127.0.0.1", port=int(args[1]), log_level="warning", access_log=False)
        return
    clients = int(args[args.index("--clients") + 1]) if "--clients" in args else 50
    requests = int(args[args.index("--requests") + 1]) if "--requests" in args else 5000
    asyncio.run(run_upstream_bench(clients, requests, Path("bench-results")))


if __name__ == "__main__":
    main()
