"""Suspend and resume orders on `iris.worker.<id>.control` (FakeEngine, real NATS): a suspended lease
frees its slot at once and stays listed in the heartbeat; resumed, its answer goes on to the very text an
uninterrupted run gives; the bound on suspended leases and the free-slot rule refuse what they must."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from gpu_worker.engines.fake import FakeEngine
from gpu_worker.engines.protocol import Piece, StopSignal
from gpu_worker.service import WorkerService
from iris.launch.nats_server import NatsServer
from iris.sdk.client import Client, Generation
from schemas.messages import (
    GenerateRequest,
    Heartbeat,
    LeaseControl,
    LeaseControlAnswer,
    Result,
    encoder,
    heartbeat_decoder,
    lease_control_answer_decoder,
)
from schemas.subjects import heartbeat_subject, lease_control_subject
from tests.integration.services import broker, eventually, worker


async def control(nc: NATS, worker_id: str, order: LeaseControl) -> LeaseControlAnswer:
    reply = await nc.request(lease_control_subject(worker_id), encoder.encode(order), timeout=10)
    return lease_control_answer_decoder.decode(reply.data)


async def test_suspend_frees_the_slot_and_resume_finishes_the_same_answer(nats_server: NatsServer, nc: NATS) -> None:
    engine = FakeEngine("fake", slots=1, tokens_per_s=100, max_suspended=1)
    request = GenerateRequest(prompt="tell a long story", max_tokens=60, temperature=0)
    expected = "".join(
        [e.text async for e in FakeEngine("fake").generate(request, StopSignal()) if isinstance(e, Piece)]
    )
    beats = await nc.subscribe(heartbeat_subject("fake", "w1"))
    async with broker(nats_server.url), worker(nats_server.url, engine, "w1", heartbeat_s=0.1) as service:
        client = Client(nc)
        generation = client.generate("tell a long story", model="fake", max_tokens=60, temperature=0)
        chunks: list[str] = []
        reader = asyncio.create_task(_read(generation, chunks))
        await eventually(_has(chunks, 5), what="the answer to be under way")
        seq = next(iter(service.running))
        answer = await control(nc, "w1", LeaseControl(suspend=[seq]))
        assert answer.suspended == [seq] and not service.busy
        assert (await control(nc, "w1", LeaseControl(suspend=[seq]))).refused == [seq]
        beat = await _beat_with(beats, lambda b: b.suspended == [seq])
        assert beat.free_slots == 1 and beat.running == [seq] and beat.max_suspended == 1
        held = len(chunks)
        for _ in range(3):  # three more beats (~30 tokens' time at 100/s): no chunk arrives while suspended
            await _beat_with(beats, lambda b: b.suspended == [seq])
        assert len(chunks) == held and not reader.done()
        answer = await control(nc, "w1", LeaseControl(resume=[seq]))
        assert answer.resumed == [seq]
        result = await reader
        assert "".join(chunks) == result.text == expected
        assert result.usage.completion_tokens == 60
        assert _counter(service, "iris_worker_suspensions_total") == 1
        assert _counter(service, "iris_worker_resumes_total", mode="kept") == 1


async def test_the_suspended_bound_and_a_full_slot_refuse(nats_server: NatsServer, nc: NATS) -> None:
    engine = FakeEngine("fake", slots=2, tokens_per_s=50, max_suspended=1)
    async with broker(nats_server.url), worker(nats_server.url, engine, "w1") as service:
        client = Client(nc)
        generations = [client.generate(f"story {i}", model="fake", max_tokens=200) for i in range(2)]
        tasks = [asyncio.create_task(g.finish()) for g in generations]

        async def both_running() -> bool:
            return len(service.busy) == 2

        await eventually(both_running, what="both answers to run")
        first, second = sorted(service.running)
        answer = await control(nc, "w1", LeaseControl(suspend=[first, second, 999]))
        assert answer.suspended == [first] and sorted(answer.refused) == [second, 999]
        assert (await control(nc, "w1", LeaseControl(resume=[first]))).resumed == [first]
        for generation in generations:
            await generation.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _read(generation: Generation, chunks: list[str]) -> Result:
    async for chunk in generation:
        chunks.append(chunk.text)
    assert generation.result is not None
    return generation.result


def _has(chunks: list[str], n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(chunks) >= n

    return check


async def _beat_with(sub: Subscription, predicate: Callable[[Heartbeat], bool]) -> Heartbeat:
    while True:
        beat = heartbeat_decoder.decode((await sub.next_msg(timeout=10)).data)
        if predicate(beat):
            return beat


def _counter(service: WorkerService, name: str, **labels: str) -> float:
    total = 0.0
    for metric in service.stats.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
