"""The compose health probes: each is killed at its own bound (Docker 20.10 leaves an exec probe that
overruns its timeout running, so unbounded Python probes piled up to 140 on a loaded host, load 200, every
service unhealthy), and each tells a 200 from a 503 and from a server that never answers. Run here with the
host's bash, timeout, head and grep, as the image runs them."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

COMPOSE = Path(__file__).resolve().parents[3] / "deploy" / "compose.yaml"


def probes() -> dict[str, tuple[list[str], float]]:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    checks = {name: s["healthcheck"] for name, s in services.items() if "healthcheck" in s}
    return {name: (check["test"], float(check["timeout"].rstrip("s"))) for name, check in checks.items()}


@pytest.mark.parametrize("service", sorted(probes()))
def test_each_probe_is_killed_within_the_compose_timeout(service: str) -> None:
    test, timeout_s = probes()[service]
    assert test[:2] == ["CMD", "timeout"] and float(test[2]) < timeout_s, test


class Answer(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()


def retarget(test: list[str], port: int) -> list[str]:
    """The probe pointed at `port` instead of the service's own."""
    script = test[-1]
    head, _, rest = script.partition("/dev/tcp/127.0.0.1/")
    return [*test[1:-1], f"{head}/dev/tcp/127.0.0.1/{port}{rest[rest.index(' ') :]}"]


@pytest.mark.parametrize("service", ["gateway", "broker-a", "worker-1", "nats-1"])
def test_a_probe_tells_ready_from_not_ready_and_from_silence(service: str, server: ThreadingHTTPServer) -> None:
    test, _ = probes()[service]
    port = server.server_address[1]
    Answer.status = 200
    assert subprocess.run(retarget(test, port), timeout=10).returncode == 0
    Answer.status = 503
    assert subprocess.run(retarget(test, port), timeout=10).returncode != 0
    with socket.socket() as silent:  # accepts, never answers: the probe's own bound ends it
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        assert subprocess.run(retarget(test, silent.getsockname()[1]), timeout=10).returncode != 0
