"""`iris up`: one command runs a whole Iris on this machine.

It starts nats-server (JetStream, data under the user's state dir), the broker, N workers and the gateway,
each as its own process exactly as they would run on separate hosts (`python -m broker|gpu_worker|gateway`,
started by `iris.launch.processes`), each handed its section of the one config (`iris.launch.up_config`), waits until
every worker beats, prints how to use it, and then supervises them (`iris.launch.supervisor`): a service that exits
is started again, with a line on the console. Only a service that cannot start at all stops everything (exit
1). Ctrl-C or SIGTERM stops the services in order (gateway and workers drain, then the broker, then NATS)
within `STOP_BUDGET_S`; a second Ctrl-C kills them at once. A metrics port that is taken is replaced by a
free one, and the ports are printed. Two `iris up` with different `--nats-port` keep their JetStream data
and logs apart.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import nats

from iris.launch.nats_server import NatsCluster, NatsServer, free_port
from iris.launch.processes import Service
from iris.launch.supervisor import Supervisor
from iris.launch.up_config import UpConfig, UpPlan
from runtime.connection import connect
from schemas.messages import heartbeat_decoder
from schemas.subjects import HEARTBEAT_FILTER

DEFAULT_NATS_PORT = UpConfig().nats_port
STOP_BUDGET_S = 5.0  # Ctrl-C to every process gone
WORKER_DRAIN_S = 2.5  # running answers get this long on Ctrl-C, then end with a typed error
METRICS_HOST = "127.0.0.1"


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "iris"


class Launcher:
    def __init__(self, plan: UpPlan) -> None:
        self.plan = plan
        self.config = config = plan.up
        self.state_dir = Path(config.state_dir).expanduser() if config.state_dir else default_state_dir()
        # Another `iris up` on another NATS port must not share JetStream data (nats-server does not lock it).
        instance = "" if config.nats_port == DEFAULT_NATS_PORT else f"-{config.nats_port}"
        self.log_dir = self.state_dir / f"logs{instance}"
        self.nats: NatsServer | NatsCluster
        if config.cluster > 1:
            self.nats = NatsCluster(
                self.state_dir / f"nats-cluster{instance}",
                config.cluster,
                self.log_dir,
                config.nats_port,
                own_session=True,
            )
        else:
            self.nats = NatsServer(
                self.state_dir / f"nats{instance}",
                port=config.nats_port,
                log_file=self.log_dir / "nats.log",
                own_session=True,
            )
        self.supervisor = Supervisor(lambda line: print(line, file=sys.stderr, flush=True))
        self.metrics_ports: dict[str, int] = {}  # service → the port it serves /metrics on

    def _spawn(
        self, name: str, module: str, part: str, settings: dict[str, Any], env: dict[str, str] | None = None
    ) -> None:
        """Start `module` under the supervisor with its section's `iris up` settings, this child's own
        (`settings`) and its metrics port, worked out again at every start."""

        def service() -> Service:
            handed = {"nats_url": self.nats.url, **self.plan.handoff[part], **settings, **self._metrics(name)}
            return Service(module, handed, config_file=self.plan.config_file, env=env or {})

        self.supervisor.add(name, service, self.log_dir / f"{name}.log")

    def _metrics(self, name: str) -> dict[str, int]:
        """The service's metrics port: the default (broker 9101, workers from 9102) while it is free or
        already its own, else a free one (another `iris up`, or one still shutting down, holds it)."""
        if name not in self.metrics_ports:
            return {}
        port = self.metrics_ports[name]
        child = self.supervisor.children.get(name)
        restarting = child is not None and child.process is not None
        if not port_free(METRICS_HOST, port) and (not restarting or port in self._others_ports(name)):
            port = free_port()
        if restarting and port != self.metrics_ports[name]:
            print(f"iris: {name} metrics moved to http://{METRICS_HOST}:{port}/metrics", file=sys.stderr)
        self.metrics_ports[name] = port
        return {"metrics_port": port}

    def _others_ports(self, name: str) -> set[int]:
        return {port for other, port in self.metrics_ports.items() if other != name}

    def _plan_metrics_ports(self) -> None:
        if not self.config.metrics_port:
            return
        names = ["broker", *(f"worker-{index}" for index in range(self.config.workers))]
        taken: set[int] = set()
        for offset, name in enumerate(names):
            port = self.config.metrics_port + offset
            if port in taken or not port_free(METRICS_HOST, port):
                port = free_port()
            taken.add(port)
            self.metrics_ports[name] = port

    async def run(self) -> int:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        stop, hurry = asyncio.Event(), asyncio.Event()

        def on_signal() -> None:  # the first drains and stops in order, a second kills at once
            (hurry if stop.is_set() else stop).set()
            if hurry.is_set():
                print("iris: second signal, killing everything now", file=sys.stderr, flush=True)

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        self.nats.start()
        try:
            self._start_services()
            models = await self._wait_ready(stop)
            if models is None or not await self._wait_gateway(stop):
                return 1
            self._print_ready(models)
            await self._supervise(stop)
            return 0
        finally:
            await self._stop_all(hurry)

    def _start_services(self) -> None:
        self._plan_metrics_ports()
        replicas = {"replicas": min(3, self.config.cluster)} if self.config.cluster > 1 else {}
        self._spawn("broker", "broker", "broker", replicas)
        for index in range(self.config.workers):
            worker = {"worker_id": f"up-{index}", "drain_timeout_s": WORKER_DRAIN_S}
            self._spawn(f"worker-{index}", "gpu_worker", "worker", worker)
        keys = {"IRIS_API_KEYS": " ".join(self.config.api_key)} if self.config.api_key else {}  # never on argv
        self._spawn("gateway", "gateway", "gateway", {}, keys)

    async def _stop_all(self, hurry: asyncio.Event) -> None:
        """Gateway and workers first (workers drain), the broker once they are gone, NATS last."""
        workers = [name for name in self.supervisor.children if name.startswith("worker")]
        stages = [["gateway", *workers], ["broker"]]
        await self.supervisor.stop(stages, STOP_BUDGET_S - 0.5, hurry)
        if hurry.is_set():
            self._kill_nats()
        else:
            self.nats.stop()
        print("iris: stopped", file=sys.stderr, flush=True)

    def _kill_nats(self) -> None:
        nodes = self.nats.nodes if isinstance(self.nats, NatsCluster) else [self.nats]
        for node in nodes:
            node.kill()

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
        c = self.plan.gateway
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
        """A service that exited before all were up: it cannot start at all (bad model, port in use...)."""
        exited = self.supervisor.exited()
        return exited[0].name if exited else None

    def _report_failure(self, stop: asyncio.Event) -> None:
        dead = self._dead_child()
        if dead:
            child = self.supervisor.children[dead]
            assert child.process is not None
            print(f"iris: {dead} exited with code {child.process.returncode}; see {child.log_path}", file=sys.stderr)
        elif not stop.is_set():
            print(
                f"iris: workers not ready within {self.config.ready_timeout_s:.0f} s; see {self.log_dir}",
                file=sys.stderr,
            )

    def _print_ready(self, models: set[str]) -> None:
        model = ", ".join(sorted(models))
        worker, gateway = self.plan.worker, self.plan.gateway
        capacity = f"{self.config.workers} worker(s) x {worker.slots} slot(s), engine {worker.engine}"
        http = f"http://{gateway.http_host}:{gateway.http_port}" if gateway.http_port else "off"
        metrics = f"{http}/metrics (gateway)" if gateway.http_port else "off"
        status = f"{http}/status" if gateway.http_port else "off"
        for name, port in self.metrics_ports.items():
            metrics += f"\n              http://{METRICS_HOST}:{port}/metrics ({name})"
        print(
            f"\nIris is up.\n"
            f"  HTTP API    {http}  (Ollama: /api/*, OpenAI: /v1/*)\n"
            f"  status      {status}  (live queues, workers, rejections; open it in a browser)\n"
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

    async def _supervise(self, stop: asyncio.Event) -> None:
        """Until Ctrl-C: a service that exits is started again (`Supervisor.watch`)."""
        while not stop.is_set():
            self.supervisor.watch()
            try:
                await asyncio.wait_for(stop.wait(), timeout=0.2)
            except TimeoutError:
                pass


def port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def loop_time() -> float:
    return asyncio.get_running_loop().time()
