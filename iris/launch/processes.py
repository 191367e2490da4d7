"""Start Iris service processes: the one way `iris up`, the benches and the tests run `python -m broker |
gpu_worker | gateway`, exactly as on separate hosts.

A `Service` names the module, the settings handed to it (`--config-json`, a JSON object the service loads
with its other config sources: above its TOML table and `IRIS_<PART>_*` variables, below flags), flags as a
user types them, and its config file. Output goes to one log file per process, unbuffered. `iris up`
starts its children `supervised`: in their own session (the terminal's Ctrl-C reaches `iris up` only, which
stops them in order) and with SIGTERM should `iris up` itself die (Linux `PR_SET_PDEATHSIG`).
nats-server is started by `iris.launch.nats_server` (`NatsServer`, `NatsCluster`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from runtime.config_loading import HANDOFF_FLAG

if TYPE_CHECKING:
    from iris.launch.nats_server import NatsServer
    from iris.sdk.client import Client

Process = subprocess.Popen[bytes]
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Service:
    """One service process to start."""

    module: str  # "broker", "gpu_worker", "gateway"
    settings: Mapping[str, Any] = field(default_factory=dict)  # config fields, handed over as --config-json
    args: Sequence[str] = ()  # further flags, as a user types them
    config_file: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)

    def command(self) -> list[str]:
        command = [sys.executable, "-m", self.module, *self.args]
        if self.settings:
            command += [HANDOFF_FLAG, msgspec.json.encode(dict(self.settings)).decode()]
        if self.config_file is not None:
            command += ["--config", str(self.config_file)]
        return command


def die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent (`iris up`) dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def start(service: Service, log_path: Path, *, supervised: bool = False) -> Process:
    """Start `service`, its output appended to `log_path`."""
    with open(log_path, "ab") as log:  # the child holds its own copy
        return subprocess.Popen(
            service.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **service.env},
            start_new_session=supervised,
            preexec_fn=die_with_parent if supervised else None,
        )


def spawn(module: str, nats_url: str, args: Sequence[str], log_path: Path) -> Process:
    """`python -m <module>` on `nats_url` with flags `args` (what a bench starts)."""
    return start(Service(module, {"nats_url": nats_url}, args), log_path)


def stop_all(processes: Sequence[Process], server: NatsServer | None = None, grace_s: float = 60.0) -> None:
    """Services first (SIGTERM, they drain), then the server. One still running `grace_s` after is killed
    and named on stderr: a bench keeps the figures it has measured whatever one service's exit does."""
    for process in processes:
        process.terminate()
    give_up = time.monotonic() + grace_s
    for process in processes:
        try:
            process.wait(timeout=max(0.0, give_up - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            command = " ".join(map(str, process.args))[:160]
            print(f"{command}: still running {grace_s:g} s after SIGTERM, killed", file=sys.stderr)
    if server is not None:
        server.stop()


def kill_all(processes: Sequence[Process]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


async def wait_for_model(client: Client, model: str, processes: Sequence[Process], timeout_s: float = 300.0) -> None:
    """Until a worker serves `model`; a service that exits meanwhile fails at once."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        exited = [p for p in processes if p.poll() is not None]
        if exited:
            raise RuntimeError(f"a service exited while starting: {' '.join(map(str, exited[0].args))}")
        if model in await client.models(wait_s=2.0):
            return
    raise TimeoutError(f"no worker for {model} within {timeout_s} s")
