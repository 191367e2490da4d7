"""Suspend and resume orders on `iris.worker.<id>.control` (FakeEngine, real NATS): a suspended lease
frees its slot at once and stays listed in the heartbeat; resumed, its answer goes on to the very text an
uninterrupted run gives; the bound on suspended leases and the free-slot rule refuse what they must."""

from __future__ import annotations

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from broker.config import BrokerConfig
from broker.streams import ensure_lease_bucket, ensure_streams
from gpu_worker.engines.fake import FakeEngine
from gpu_worker.engines.protocol import Piece, StopSignal
from gpu_worker.service import WorkerService
from iris.launch.nats_server import NatsServer
from runtime.clock import now_ms
from schemas import headers as h
from schemas.messages import (
    GenerateRequest,
    Heartbeat,
    Lease,
    LeaseControl,
    LeaseControlAnswer,
    LeaseOffer,
    Result,
    chunk_decoder,
    encoder,
    heartbeat_decoder,
    lease_answer_decoder,
    lease_control_answer_decoder,
    result_decoder,
)
from schemas.subjects import heartbeat_subject, lease_control_subject, lease_offer_subject, request_subject
from tests.integration.services import eventually, worker


async def control(nc: NATS, worker_id: str, order: LeaseControl) -> LeaseControlAnswer:
    reply = await nc.request(lease_control_subject(worker_id), encoder.encode(order), timeout=10)
    return lease_control_answer_decoder.decode(reply.data)


async def test_suspend_frees_the_slot_and_resume_finishes_the_same_answer(nats_server: NatsServer, nc: NATS) -> None:
    """The test is the broker here: a broker would resume the suspended lease on the worker's free slot
    as soon as a heartbeat lists it, racing the test's own resume order."""
    engine = FakeEngine("fake", slots=1, tokens_per_s=100, max_suspended=1)
    request = GenerateRequest(prompt="tell a long story", max_tokens=60, temperature=0)
    expected = "".join(
        [e.text async for e in FakeEngine("fake").generate(request, StopSignal()) if isinstance(e, Piece)]
    )
    await ensure_streams(nc.jetstream(), BrokerConfig())
    await ensure_lease_bucket(nc.jetstream(), BrokerConfig())
    beats = await nc.subscribe(heartbeat_subject("fake", "w1"))
    async with worker(nats_server.url, engine, "w1", heartbeat_s=0.1) as service:
        replies = await Replies.offered(nc, "w1", request)
        await eventually(lambda: replies.has(5), what="the answer to be under way")
        seq = replies.seq
        answer = await control(nc, "w1", LeaseControl(suspend=[seq]))
        assert answer.suspended == [seq] and not service.busy
        assert (await control(nc, "w1", LeaseControl(suspend=[seq]))).refused == [seq]
        beat = await _next_beat(beats)
        assert beat.suspended == [seq] and beat.free_slots == 1 and beat.running == [seq] and beat.max_suspended == 1
        held = len(replies.chunks)
        for _ in range(3):  # three more beats (~30 tokens' time at 100/s): no chunk arrives while suspended
            assert (await _next_beat(beats)).suspended == [seq]
        assert len(replies.chunks) == held and replies.result is None
        answer = await control(nc, "w1", LeaseControl(resume=[seq]))
        assert answer.resumed == [seq]
        await eventually(replies.done, what="the final result")
        assert replies.result is not None
        assert "".join(replies.chunks) == replies.result.text == expected
        assert replies.indexes == list(range(60)) and replies.result.usage.completion_tokens == 60
        assert _counter(service, "iris_worker_suspensions_total") == 1
        assert _counter(service, "iris_worker_resumes_total", mode="kept") == 1


async def test_the_suspended_bound_and_a_full_slot_refuse(nats_server: NatsServer, nc: NATS) -> None:
    engine = FakeEngine("fake", slots=2, tokens_per_s=50, max_suspended=1)
    await ensure_streams(nc.jetstream(), BrokerConfig())
    await ensure_lease_bucket(nc.jetstream(), BrokerConfig())
    async with worker(nats_server.url, engine, "w1") as service:
        stories = [GenerateRequest(prompt=f"story {i}", max_tokens=200) for i in range(2)]
        first, second = [(await Replies.offered(nc, "w1", story, f"story{i}")).seq for i, story in enumerate(stories)]

        async def both_running() -> bool:
            return len(service.busy) == 2

        await eventually(both_running, what="both answers to run")
        answer = await control(nc, "w1", LeaseControl(suspend=[first, second, 999]))
        assert answer.suspended == [first] and sorted(answer.refused) == [second, 999]
        assert (await control(nc, "w1", LeaseControl(resume=[first]))).resumed == [first]
        for _, stop, _ in service.running.values():
            stop.stop("cancelled")


class Replies:
    """One request put in the stream and offered to a worker by the test itself, its replies collected."""

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.chunks: list[str] = []
        self.indexes: list[int] = []
        self.result: Result | None = None

    @classmethod
    async def offered(cls, nc: NATS, worker_id: str, request: GenerateRequest, request_id: str = "story") -> Replies:
        inbox = nc.new_inbox()
        now = now_ms()
        headers = {h.REPLY_TO: inbox, h.MSG_ID: request_id, h.DEADLINE: str(now + 60_000)}
        ack = await nc.jetstream().publish(request_subject("fake", "default"), encoder.encode(request), headers=headers)
        replies = cls(ack.seq)
        await nc.subscribe(inbox, cb=replies.on_reply)
        lease = Lease(ack.seq, request_id, "fake", "default", inbox, now + 60_000, now, worker_id, 1, now)
        offer = await nc.request(lease_offer_subject(worker_id), encoder.encode(LeaseOffer([lease])), timeout=5)
        assert lease_answer_decoder.decode(offer.data).accepted == [ack.seq]
        return replies

    async def on_reply(self, msg: Msg) -> None:
        kind = (msg.headers or {}).get(h.KIND)
        if kind == h.KIND_CHUNK:
            chunk = chunk_decoder.decode(msg.data)
            self.chunks.append(chunk.text)
            self.indexes.append(chunk.index)
        elif kind == h.KIND_RESULT:
            self.result = result_decoder.decode(msg.data)

    async def has(self, n: int) -> bool:
        return len(self.chunks) >= n

    async def done(self) -> bool:
        return self.result is not None


async def _next_beat(sub: Subscription) -> Heartbeat:
    """The first heartbeat received after this call (the worker sent it after everything it answered us
    before): those already queued are skipped."""
    for _ in range(sub.pending_msgs):
        await sub.next_msg(timeout=10)
    return heartbeat_decoder.decode((await sub.next_msg(timeout=10)).data)


def _counter(service: WorkerService, name: str, **labels: str) -> float:
    total = 0.0
    for metric in service.stats.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
