"""A small real HTTP server that speaks enough of Ollama's and OpenAI's streaming APIs for `HttpEngine`.

It answers every request with `words` (one streamed line per word, `delay_s` apart, or one JSON body when
the request has `stream: false`), records each request body, counts the TCP connections it accepted
(HTTP/1.1 keep-alive, chunked streams), and notes when a client hung up mid-stream, which is how a test
sees that a cancel reached it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeUpstream:
    def __init__(self, model: str = "mistral:latest", words: int = 5, delay_s: float = 0.0) -> None:
        self.model = model
        self.words = words
        self.delay_s = delay_s
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.hung_up = threading.Event()
        self.status = 200  # set to answer generation requests with an error status
        self.url = ""
        self.connections = 0  # TCP connections accepted

    def text(self) -> list[str]:
        return [f"w{i} " for i in range(self.words)]


def _handler(upstream: FakeUpstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: a client that reads each body to its end reuses its connection

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            if self.path == "/api/tags":
                self._json({"models": [{"name": upstream.model, "model": upstream.model}]})
            elif self.path == "/v1/models":
                self._json({"object": "list", "data": [{"id": upstream.model, "object": "model"}]})
            else:
                self._json({"error": "not found"}, 404)

        def setup(self) -> None:
            super().setup()
            upstream.connections += 1

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            upstream.requests.append((self.path, body))
            if upstream.status != 200:
                self._json({"error": f"bad request: {self.path}"}, upstream.status)
                return
            if body.get("stream") is False:
                self._json(_whole(self.path, upstream))
                return
            _stream_reply(self, upstream, body)

        def _json(self, data: Any, status: int = 200) -> None:
            payload = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


def _stream_reply(handler: BaseHTTPRequestHandler, upstream: FakeUpstream, body: dict[str, Any]) -> None:
    """A chunked NDJSON (Ollama) or SSE (OpenAI) answer, word by word; a client that hangs up sets `hung_up`."""
    handler.send_response(200)
    openai = handler.path.startswith("/v1/")
    handler.send_header("Content-Type", "text/event-stream" if openai else "application/x-ndjson")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    try:
        for line in _stream_lines(handler.path, body, upstream):
            data = line.encode()
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            handler.wfile.flush()
            time.sleep(upstream.delay_s)
        handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()
    except (BrokenPipeError, ConnectionResetError):
        upstream.hung_up.set()
        handler.close_connection = True


def _stream_lines(path: str, body: dict[str, Any], upstream: FakeUpstream) -> Iterator[str]:
    words = upstream.text()
    if path == "/api/generate":
        yield from (json.dumps({"response": w, "done": False}) + "\n" for w in words)
        yield (
            json.dumps(
                {
                    "response": "",
                    "done": True,
                    "done_reason": "length",
                    "prompt_eval_count": 7,
                    "eval_count": len(words),
                }
            )
            + "\n"
        )
    elif path == "/api/chat":
        yield from (json.dumps({"message": {"role": "assistant", "content": w}, "done": False}) + "\n" for w in words)
        yield (
            json.dumps(
                {
                    "message": {"role": "assistant", "content": ""},
                    "done": True,
                    "done_reason": "stop",
                    "prompt_eval_count": 9,
                    "eval_count": len(words),
                }
            )
            + "\n"
        )
    else:
        chat = path.endswith("/chat/completions")
        for w in words:
            choice = {"index": 0, "delta": {"content": w}} if chat else {"index": 0, "text": w}
            yield "data: " + json.dumps({"choices": [choice | {"finish_reason": None}]}) + "\n\n"
        yield "data: " + json.dumps({"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}) + "\n\n"
        usage = {"prompt_tokens": 11, "completion_tokens": len(words), "total_tokens": 11 + len(words)}
        yield "data: " + json.dumps({"choices": [], "usage": usage}) + "\n\n"
        yield "data: [DONE]\n\n"


def _whole(path: str, upstream: FakeUpstream) -> dict[str, Any]:
    text, n = "".join(upstream.text()), upstream.words
    if path == "/api/generate":
        return {"response": text, "done": True, "done_reason": "length", "prompt_eval_count": 7, "eval_count": n}
    if path == "/api/chat":
        message = {"role": "assistant", "content": text}
        return {"message": message, "done": True, "done_reason": "stop", "prompt_eval_count": 9, "eval_count": n}
    choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
    if path.endswith("/chat/completions"):
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {"choices": [choice], "usage": {"prompt_tokens": 11, "completion_tokens": n, "total_tokens": 11 + n}}


@contextmanager
def serve(upstream: FakeUpstream) -> Iterator[FakeUpstream]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(upstream))
    server.daemon_threads = True
    upstream.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield upstream
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
