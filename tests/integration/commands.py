"""The `iris` command as a user runs it from a terminal, for the CLI tests."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

IRIS = [sys.executable, "-m", "iris.cli"]


def wait_for_line(path: Path, text: str, proc: subprocess.Popen[bytes], timeout_s: float = 180.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if text in path.read_text():
            return
        assert proc.poll() is None, f"iris up exited early:\n{path.read_text()}"
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not printed within {timeout_s} s:\n{path.read_text()}")
