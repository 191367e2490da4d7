"""Priority preemption end to end (broker + FakeEngine worker, real NATS): a high-priority request that
arrives while the only slot runs a low-priority answer gets the slot at once; the low one is suspended,
resumed on the same worker afterwards, and its client reads the very answer an uninterrupted run gives."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS
from prometheus_client import CollectorRegistry

from gpu_worker.engines.fake import FakeEngine
from gpu_worker.engines.protocol import Piece, StopSignal
from iris.launch.nats_server import NatsServer
from iris.sdk.client import Client
from schemas.messages import GenerateRequest
from tests.integration.services import broker, eventually, worker


async def expected_text(prompt: str, max_tokens: int) -> str:
    request = GenerateRequest(prompt=prompt, max_tokens=max_tokens)
    return "".join([e.text async for e in FakeEngine("fake").generate(request, StopSignal()) if isinstance(e, Piece)])


async def test_high_priority_preempts_and_the_low_answer_resumes_intact(nats_server: NatsServer, nc: NATS) -> None:
    engine = FakeEngine("fake", slots=1, tokens_per_s=100, max_suspended=1)
    options = {"preempt_ratio": 2.0, "preempt_min_run_s": 0.1, "max_concurrency": 1}
    async with broker(nats_server.url, **options) as service, worker(nats_server.url, engine, "w1", heartbeat_s=0.2):
        client = Client(nc)
        low = client.generate("a long low answer", model="fake", max_tokens=80, workload="free", priority=1)
        low_chunks: list[str] = []

        async def read_low() -> None:
            async for chunk in low:
                low_chunks.append(chunk.text)

        low_task = asyncio.create_task(read_low())

        async def low_running() -> bool:
            return len(low_chunks) >= 20

        await eventually(low_running, what="the low answer to be well under way")
        high = await client.complete("urgent", model="fake", max_tokens=10, workload="paid", priority=5)
        assert not low_task.done() and len(low_chunks) < 80  # the high one finished first
        await low_task
        assert low.result is not None and low.result.text == "".join(low_chunks)
        assert low.result.text == await expected_text("a long low answer", 80)
        assert low.result.attempt == 1 and high.usage.completion_tokens == 10
        assert _total(service.metrics.registry, "iris_broker_suspensions_total") == 1
        assert _total(service.metrics.registry, "iris_broker_resumes_total") == 1


def _total(registry: CollectorRegistry, name: str) -> float:
    return sum(s.value for m in registry.collect() for s in m.samples if s.name == name)
