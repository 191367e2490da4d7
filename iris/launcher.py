"""`iris up`: one command runs a whole Iris on this machine.

It starts nats-server (JetStream, data under the user's state dir), the broker, N workers and the gateway,
each as its own process exactly as they would run on separate hosts (`python -m broker|gpu_worker|gateway
--nats URL`), waits until every worker beats, prints how to use it, and on Ctrl-C or SIGTERM stops the
services (workers drain) before NATS. If any service dies, everything is stopped and the exit is non-zero.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import nats
from msgspec import Meta

from iris.nats_server import NatsCluster, NatsServer
from schemas.connection import connect
from schemas.messages import heartbeat_decoder
from schemas.subjects import HEARTBEAT_FILTER


class UpConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    engine: Literal["llama", "fake"] = "llama"
    model: str = ""
    model_name: str = ""
    workers: Annotated[int, Meta(ge=1, le=64)] = 1
    slots: Annotated[int, Meta(ge=1, le=256)] = 1
    max_concurrency: Annotated[int, Meta(ge=0)] = 0
    policy: Literal["wfq", "fifo"] = "wfq"
    n_gpu_layers: Annotated[int, Meta(ge=-1)] = 0
    fake_tps: Annotated[float, Meta(ge=0)] = 0.0
    nats_port: Annotated[int, Meta(ge=0, le=65535)] = 4222
    cluster: Annotated[int, Meta(ge=1, le=5)] = 1  # JetStream nodes; >1 runs a local cluster with R3 (or Rn) streams
    http_host: str = "127.0.0.1"
    http_port: Annotated[int, Meta(ge=0, le=65535)] = 8080
    metrics_port: Annotated[int, Meta(ge=0, le=65535)] = 9101  # broker; workers count up from the next port
    require_key: bool = False
    api_key: list[str] = []  # KEY[:workload[:max_priority]], handed to the gateway by environment, not argv
    state_dir: str = ""
    ready_timeout_s: Annotated[float, Meta(gt=0)] = 300.0


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "iris"


class Launcher:
    def __init__(self, config: UpConfig, config_file: Path | None = None) -> None:
        self.config = config
        self.config_file = config_file
        self.state_dir = Path(config.state_dir).expanduser() if config.state_dir else default_state_dir()
        self.log_dir = self.state_dir / "logs"
        self.nats: NatsServer | NatsCluster
        if config.cluster > 1:
            self.nats = NatsCluster(self.state_dir / "nats-cluster", config.cluster, self.log_dir, config.nats_port)
        else:
            self.nats = NatsServer(self.state_dir / "nats", port=config.nats_port, log_file=self.log_dir / "nats.log")
        self.children: dict[str, subprocess.Popen[bytes]] = {}

    def _spawn(self, name: str, module: str, args: list[str], env: dict[str, str] | None = None) -> None:
        cmd = [sys.executable, "-m", module, "--nats", self.nats.url, *args]
        if self.config_file is not None:
            cmd += ["--config", str(self.config_file)]
        log = open(self.log_dir / f"{name}.log", "ab")
        # Own process group: the terminal's Ctrl-C reaches us only, and we stop children in order.
        self.children[name] = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})}
        )

    def _gateway_args(self) -> tuple[list[str], dict[str, str]]:
        args = self._flags(("http_host", "http_port"))
        if self.config.require_key:
            args.append("--require-key")
        env = {"IRIS_API_KEYS": " ".join(self.config.api_key)} if self.config.api_key else {}
        return args, env

    def _flags(self, names: tuple[str, ...]) -> list[str]:
        """Flags for settings given to `iris up`; the rest stay unset so `[broker]`/`[worker]` tables apply."""
        defaults = UpConfig()
        flags: list[str] = []
        for name in names:
            value = getattr(self.config, name)
            if value != getattr(defaults, name):
                flags += [f"--{name.replace('_', '-')}", str(value)]
        return flags

    def _worker_args(self, index: int) -> list[str]:
        names = ("engine", "model", "model_name", "slots", "n_gpu_layers", "fake_tps")
        return ["--worker-id", f"up-{index}", *self._flags(names), *self._metrics_port(1 + index)]

    def _metrics_port(self, offset: int) -> list[str]:
        port = self.config.metrics_port
        return ["--metrics-port", str(port + offset)] if port else []

    async def run(self) -> int:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.nats.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            replicas = ["--replicas", str(min(3, self.config.cluster))] if self.config.cluster > 1 else []
            broker_args = self._flags(("policy", "max_concurrency")) + self._metrics_port(0) + replicas
            self._spawn("broker", "broker", broker_args)
            for index in range(self.config.workers):
                self._spawn(f"worker-{index}", "gpu_worker", self._worker_args(index))
            self._spawn("gateway", "gateway", *self._gateway_args())
            models = await self._wait_ready(stop)
            if models is None or not await self._wait_gateway(stop):
                return 1
            self._print_ready(models)
            return await self._supervise(stop)
        finally:
            self._stop_children()
            self.nats.stop()
            print("iris: stopped", file=sys.stderr)

    async def _wait_ready(self, stop: asyncio.Event) -> set[str] | None:
        """Wait until every worker has sent a heartbeat; None when a child died or we were stopped."""
        print(f"iris: starting (logs in {self.log_dir}) ...", file=sys.stderr)
        nc = await connect(self.nats.url, "iris-up")
        beating: dict[str, str] = {}
        sub = await nc.subscribe(HEARTBEAT_FILTER)
        try:
            deadline = loop_time() + self.config.ready_timeout_s
            while len(beating) < self.config.workers:
                if stop.is_set() or self._dead_child() or loop_time() > deadline:
                    self._report_failure(stop)
                    return None
                try:
                    msg = await sub.next_msg(timeout=0.5)
                except nats.errors.TimeoutError:
                    continue
                beat = heartbeat_decoder.decode(msg.data)
                beating[beat.worker_id] = beat.model
        finally:
            await nc.close()
        return set(beating.values())

    async def _wait_gateway(self, stop: asyncio.Event) -> bool:
        """Wait until the gateway's HTTP port accepts connections (so the printed URL works at once)."""
        c = self.config
        if not c.http_port:
            return True
        host = "127.0.0.1" if c.http_host in ("0.0.0.0", "localhost") else c.http_host.strip("[]")
        deadline = loop_time() + 60.0
        while not (stop.is_set() or self._dead_child() or loop_time() > deadline):
            try:
                _, writer = await asyncio.open_connection(host, c.http_port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            writer.close()
            return True
        self._report_failure(stop)
        return False

    def _dead_child(self) -> str | None:
        return next((name for name, p in self.children.items() if p.poll() is not None), None)

    def _report_failure(self, stop: asyncio.Event) -> None:
        dead = self._dead_child()
        if dead:
            print(
                f"iris: {dead} exited with code {self.children[dead].returncode}; see {self.log_dir / dead}.log",
                file=sys.stderr,
            )
        elif not stop.is_set():
            print(
                f"iris: workers not ready within {self.config.ready_timeout_s:.0f} s; see {self.log_dir}",
                file=sys.stderr,
            )

    def _print_ready(self, models: set[str]) -> None:
        model = ", ".join(sorted(models))
        c = self.config
        capacity = f"{c.workers} worker(s) x {c.slots} slot(s), engine {c.engine}"
        http = f"http://{c.http_host}:{c.http_port}" if c.http_port else "off"
        metrics = "off"
        if c.metrics_port:
            last = c.metrics_port + c.workers
            metrics = f"{http}/metrics (gateway), http://127.0.0.1:{c.metrics_port}-{last}/metrics (broker, workers)"
        print(
            f"\nIris is up.\n"
            f"  HTTP API    {http}  (Ollama: /api/*, OpenAI: /v1/*)\n"
            f"  NATS        {self.nats.url}  (JetStream data in {self.nats.store_dir})\n"
            f"  model       {model}  ({capacity})\n"
            f"  metrics     {metrics}\n"
            f"  logs        {self.log_dir}\n\n"
            f"Try, in another terminal:\n"
            f'  iris submit "Why is the sky blue?"\n'
            f'  curl {http}/api/generate -d \'{{"model": "{model}", "prompt": "Why is the sky blue?"}}\'\n'
            f'  nats req iris.api.generate \'{{"prompt": "Why is the sky blue?", "max_tokens": 64}}\'\n\n'
            f"Ctrl-C stops everything.",
            flush=True,
        )

    async def _supervise(self, stop: asyncio.Event) -> int:
        while not stop.is_set():
            dead = self._dead_child()
            if dead:
                self._report_failure(stop)
                return 1
            try:
                await asyncio.wait_for(stop.wait(), timeout=0.5)
            except TimeoutError:
                pass
        return 0

    def _stop_children(self, timeout_s: float = 30.0) -> None:
        """Gateway and workers first (workers drain running requests), the broker last."""
        order = [n for n in self.children if n == "gateway"] + [n for n in self.children if n.startswith("worker")]
        order += [n for n in self.children if n == "broker"]
        for name in order:
            process = self.children[name]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name in order:
            process = self.children[name]
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def loop_time() -> float:
    return asyncio.get_running_loop().time()
