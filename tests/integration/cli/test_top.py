"""`iris top` under a real terminal (tmux), while load runs through a real broker and worker."""

from __future__ import annotations

import asyncio
import shlex
import uuid

from gpu_worker.engines.fake import FakeEngine
from iris.launch.nats_server import NatsServer
from iris.sdk.client import Client
from tests.integration.commands import IRIS
from tests.integration.services import broker, eventually, worker


async def tmux(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec("tmux", *args, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    return out.decode()


async def test_top_renders_live_load_in_tmux(nats_server: NatsServer) -> None:
    url = nats_server.url
    session = f"iris-top-{uuid.uuid4().hex[:8]}"
    command = shlex.join([*IRIS, "top", "--nats", url, "--refresh", "0.2"])
    async with broker(url, stats_s=0.2), worker(url, FakeEngine("fake", tokens_per_s=20), "top-w1"):
        async with await Client.connect(url) as client:
            load = [
                asyncio.ensure_future(client.complete(f"prompt {i}", model="fake", max_tokens=30, workload="batch"))
                for i in range(6)
            ]
            await tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "40", command)
            try:
                screen = ""

                async def shows_load() -> bool:
                    nonlocal screen
                    screen = await tmux("capture-pane", "-p", "-t", session)
                    return "top-w1" in screen and "batch" in screen and "100%" in screen

                await eventually(shows_load, what="iris top to show the workload, the worker and a busy slot")
                assert "Workloads" in screen and "Workers" in screen and "policy wfq" in screen
            finally:
                await tmux("kill-session", "-t", session)
                for task in load:
                    task.cancel()
                await asyncio.gather(*load, return_exceptions=True)
