"""`iris up` and `iris submit` as a user runs them: real processes, real terminal commands."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from iris.launch.nats_server import free_port
from tests.integration.commands import IRIS, wait_for_line

pytestmark = pytest.mark.slow  # the real model (or a cluster) in real processes


def generate_over_http(http_port: int, body: bytes) -> dict[str, Any]:
    """POST /api/generate with the key `iris up --api-key` added."""
    request = urllib.request.Request(f"http://127.0.0.1:{http_port}/api/generate", data=body)
    request.add_header("Authorization", "Bearer cli-test-key")
    request.add_header("X-Iris-Priority", "5")
    with urllib.request.urlopen(request, timeout=60) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def test_up_submit_and_ctrl_c(tmp_path: Path) -> None:
    port, http_port = free_port(), free_port()
    out = tmp_path / "up.out"
    up = subprocess.Popen(
        [*IRIS, "up", "--state-dir", str(tmp_path / "state"), "--nats-port", str(port), "--workers", "2"]
        + ["--http-port", str(http_port), "--metrics-port", "0", "--api-key", "cli-test-key:paid:5"],
        stdout=out.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_line(out, "Ctrl-C stops everything", up)
        assert "gemma3-270m" in out.read_text()
        submit = subprocess.run(
            [
                *IRIS,
                "submit",
                "--nats",
                f"nats://127.0.0.1:{port}",
                "--raw",
                "The capital of France is",
                "--max-tokens",
                "12",
                "--temperature",
                "0",
            ],
            capture_output=True,
            timeout=120,
        )
        assert submit.returncode == 0, submit.stderr.decode()
        assert len(submit.stdout.decode().strip()) > 0
        assert "[length; 12 tokens" in submit.stderr.decode() or "[stop;" in submit.stderr.decode()
        bad = subprocess.run(
            [*IRIS, "submit", "--nats", f"nats://127.0.0.1:{port}", "hi", "--max-tokens", "0"],
            capture_output=True,
            timeout=60,
        )
        assert bad.returncode == 1 and "invalid_request" in bad.stderr.decode()
        assert f"http://127.0.0.1:{http_port}" in out.read_text()  # the printed URL answers at once
        answer = generate_over_http(
            http_port, b'{"model": "gemma3:270m", "prompt": "Hi", "stream": false, "options": {"num_predict": 4}}'
        )
        assert answer["done"] and 0 < answer["eval_count"] <= 4
    finally:
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
    assert "iris: stopped" in out.read_text()
    logs = tmp_path / "state" / f"logs-{port}"  # one `iris up` per NATS port keeps its own logs and data
    assert '"worker stopped"' in (logs / "worker-0.log").read_text()
    assert '"broker stopped"' in (logs / "broker.log").read_text()
