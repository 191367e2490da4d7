"""`iris up` as a process manager: a service killed under load is restarted and no request is lost; two
`iris up` on different ports run side by side; Ctrl-C to the process group under load leaves no process
and no listening port behind."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nats

from iris.launch.nats_server import free_port
from iris.sdk.client import Client
from schemas.messages import Result
from tests.integration.commands import IRIS, wait_for_line
from tests.integration.services import eventually


class Up:
    """One `iris up --engine fake` in its own process group, as a terminal runs it."""

    def __init__(self, tmp_path: Path, state_dir: Path, name: str, *flags: str) -> None:
        self.nats_port, self.http_port = free_port(), free_port()
        self.out = tmp_path / f"{name}.out"
        self.process = subprocess.Popen(
            [*IRIS, "up", "--engine", "fake", "--state-dir", str(state_dir), "--nats-port", str(self.nats_port)]
            + ["--http-port", str(self.http_port), *flags],
            stdout=self.out.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.url = f"nats://127.0.0.1:{self.nats_port}"

    def wait_ready(self) -> None:
        wait_for_line(self.out, "Ctrl-C stops everything", self.process)

    def console(self) -> str:
        return self.out.read_text()

    def descendants(self) -> dict[int, str]:
        """Every process below `iris up` (pid → command line), read from /proc."""
        parents: dict[int, int] = {}
        commands: dict[int, str] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                commands[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
        found: dict[int, str] = {}
        frontier = [self.process.pid]
        while frontier:
            parent = frontier.pop()
            for pid, ppid in parents.items():
                if ppid == parent and pid not in found:
                    found[pid] = commands.get(pid, "")
                    frontier.append(pid)
        return found

    def pid_of(self, marker: str) -> int:
        return next(pid for pid, command in self.descendants().items() if marker in command)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@contextmanager
def iris_up(tmp_path: Path, state_dir: Path, name: str, *flags: str) -> Iterator[Up]:
    up = Up(tmp_path, state_dir, name, *flags)
    try:
        up.wait_ready()
        yield up
    finally:
        up.kill()
        for pid in up.descendants():  # only after a failure: a passing test has left none
            os.kill(pid, signal.SIGKILL)


async def load(client: Client, prefix: str, count: int, max_tokens: int = 20) -> list[Result]:
    answers = [
        client.complete(f"{prefix} {i}", model="fake", max_tokens=max_tokens, idempotency_key=f"{prefix}-{i}")
        for i in range(count)
    ]
    return await asyncio.wait_for(asyncio.gather(*answers), 120)


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def test_killed_worker_and_broker_are_restarted_and_nothing_is_lost(tmp_path: Path) -> None:
    flags = ("--workers", "2", "--slots", "2", "--fake-tps", "200", "--metrics-port", "0")
    with iris_up(tmp_path, tmp_path / "state", "up", *flags) as up:
        nc = await nats.connect(up.url)
        client = Client(nc)
        running = asyncio.ensure_future(load(client, "before", 200))

        async def under_way() -> bool:
            return '"request done"' in (tmp_path / "state" / f"logs-{up.nats_port}" / "worker-0.log").read_text()

        await eventually(under_way, what="worker-0 to serve")
        os.kill(up.pid_of("up-0"), signal.SIGKILL)
        results = await running
        assert len(results) == 200 and all(r.usage.completion_tokens == 20 for r in results)
        await eventually(lambda: _printed(up, "worker-0 restarted"), what="worker-0 restarted")
        assert "worker-0 exited with code -9" in up.console()

        os.kill(up.pid_of("-m broker"), signal.SIGKILL)
        queued = asyncio.ensure_future(load(client, "broker-restarting", 20))
        await eventually(lambda: _printed(up, "broker restarted"), what="the broker restarted")
        assert len(await queued) == 20
        assert len(await load(client, "after", 10)) == 10
        assert up.process.poll() is None
        await nc.close()


async def _printed(up: Up, text: str) -> bool:
    return text in up.console()


async def test_two_ups_side_by_side_and_ctrl_c_under_load_leaves_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"  # one state dir, as two `iris up` of one user share ~/.local/state/iris
    flags = ("--workers", "2", "--slots", "2", "--fake-tps", "100")
    with iris_up(tmp_path, state, "first", *flags) as first, iris_up(tmp_path, state, "second", *flags) as second:
        assert "9101/metrics (broker)" in first.console() + second.console()  # one got the defaults
        clients = [Client(await nats.connect(up.url)) for up in (first, second)]
        both = await asyncio.gather(*(load(client, "side-by-side", 20) for client in clients))
        assert [len(results) for results in both] == [20, 20]

        children = first.descendants()
        ports = [first.nats_port, first.http_port, *_metrics_ports(first)]
        in_flight = asyncio.ensure_future(load(clients[0], "load", 200, max_tokens=50))
        await eventually(lambda: _printed_done(tmp_path / "state" / f"logs-{first.nats_port}"), what="load under way")
        os.killpg(first.process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        assert first.process.wait(timeout=20) == 0
        assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]
        assert not [port for port in ports if listening(port)]
        in_flight.cancel()

        assert len(await load(clients[1], "still-serving", 10)) == 10
        for client in clients:
            await client.nc.close()


async def _printed_done(log_dir: Path) -> bool:
    return '"request done"' in (log_dir / "worker-0.log").read_text()


def _metrics_ports(up: Up) -> list[int]:
    ports = []
    for line in up.console().splitlines():
        if "127.0.0.1:" in line and "/metrics (" in line and ("worker" in line or "broker" in line):
            ports.append(int(line.split("127.0.0.1:")[1].split("/")[0]))
    return ports


async def test_a_second_ctrl_c_kills_at_once(tmp_path: Path) -> None:
    flags = ("--workers", "1", "--slots", "1", "--fake-tps", "5", "--metrics-port", "0")
    with iris_up(tmp_path, tmp_path / "state", "up", *flags) as up:
        nc = await nats.connect(up.url)
        chunks = aiter(Client(nc).generate("long", model="fake", max_tokens=1000))
        await asyncio.wait_for(anext(chunks), 30)  # the long answer runs
        children = up.descendants()
        os.killpg(up.process.pid, signal.SIGINT)
        await eventually(lambda: _draining(up), what="the worker draining")
        os.killpg(up.process.pid, signal.SIGINT)  # the user presses Ctrl-C again while it drains
        assert up.process.wait(timeout=20) == 0
        assert "second signal, killing everything now" in up.console()
        assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]
        await nc.close()


def test_a_service_that_cannot_start_stops_everything(tmp_path: Path) -> None:
    up = Up(tmp_path, tmp_path / "state", "up", "--engine", "llama", "--model", str(tmp_path / "missing.gguf"))
    try:
        assert up.process.wait(timeout=120) == 1
        assert "worker-0 exited with code" in up.console() and "restarting" not in up.console()
        assert not up.descendants()
    finally:
        up.kill()


async def _draining(up: Up) -> bool:
    return '"draining"' in (up.out.parent / "state" / f"logs-{up.nats_port}" / "worker-0.log").read_text()
