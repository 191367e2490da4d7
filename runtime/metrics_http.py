"""Serve one Prometheus registry on `/metrics` (prometheus_client's own HTTP server thread), for the
services that have no HTTP server of their own (broker, worker; the gateway serves it on its API port)."""

from __future__ import annotations

from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server


class MetricsEndpoint:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._server: tuple[WSGIServer, Thread] | None = None

    def serve(self, host: str, port: int) -> None:
        self._server = start_http_server(port, host, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            server, thread = self._server
            server.shutdown()
            thread.join(timeout=5)
            self._server = None
