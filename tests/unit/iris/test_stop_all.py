"""A bench's `stop_all` ends every service it started: one that ignores SIGTERM is killed after the
grace, and named, instead of raising (a raise lost a whole seed run's figures)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from iris.launch.processes import stop_all

DEAF = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"


def test_a_service_deaf_to_sigterm_is_killed_after_the_grace(capsys: pytest.CaptureFixture[str]) -> None:
    deaf = subprocess.Popen([sys.executable, "-c", DEAF], stdout=subprocess.PIPE)
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    assert deaf.stdout is not None and deaf.stdout.readline() == b"ready\n"  # its handler is in place
    stop_all([deaf, polite], grace_s=0.5)
    assert deaf.returncode == -9 and polite.returncode == -15
    assert "still running 0.5 s after SIGTERM, killed" in capsys.readouterr().err
