"""Fixtures chained server → client → services, as nats.py's own tests do: a real nats-server on a free
loopback port for every test, services in-process (FakeEngine) or as real processes."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import hypothesis  # noqa: F401  (imported up front: its plugin's late import at the summary trips a CPython 3.11 AST bug)
import nats
import pytest
from nats.aio.client import Client as NATS

from iris.launch import processes as service_processes
from iris.launch.nats_server import NatsServer
from iris.launch.processes import Service


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats", log_file=tmp_path / "nats.log").start()
    yield server
    server.stop()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


class Processes:
    """Service processes started by a test, each with its own log; all killed at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, module: str, *args: str) -> subprocess.Popen[bytes]:
        """`python -m <module> ARGS…` as a user types it, started as `iris up` and the benches start them."""
        proc = service_processes.start(Service(module, args=args), self.tmp_path / f"{name}.log")
        self.procs[name] = proc
        return proc

    def start_fake_worker(self, url: str, worker_id: str, tokens_per_s: float) -> subprocess.Popen[bytes]:
        """A worker process serving model `fake` with FakeEngine at `tokens_per_s` per sequence."""
        args = ["--nats", url, "--engine", "fake", "--model-name", "fake", "--fake-tps", str(tokens_per_s)]
        return self.start(worker_id, "gpu_worker", *args, "--worker-id", worker_id)

    def log(self, name: str) -> str:
        return (self.tmp_path / f"{name}.log").read_text()

    def kill_all(self) -> None:
        service_processes.kill_all(list(self.procs.values()))


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    yield procs
    procs.kill_all()


@pytest.fixture(scope="session")
def embedded_model() -> str:
    from gpu_worker.embedded_model import embedded_model_path

    return str(embedded_model_path())


@pytest.fixture(scope="session")
def tiny_mistral_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A few-MB random-weight GGUF with Mistral's architecture, SentencePiece vocab and chat template."""
    from iris.bench.random_gguf import TINY, write_llama_gguf

    return str(write_llama_gguf(tmp_path_factory.mktemp("models") / "tiny-mistral.gguf", TINY))
