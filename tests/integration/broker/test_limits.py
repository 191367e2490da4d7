"""`limit_by` with borrowing, its live reload, and the WFQ minimum share, through a real nats-server.
Admission tickets make the slots easy to hold and hand back one at a time; one test uses real requests."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client as NATS

from broker.config import BrokerConfig, ModelConfig
from broker.service import BrokerService
from gpu_worker.engines.fake import FakeEngine
from iris.launch.nats_server import NatsServer
from iris.sdk.admission import Admission
from iris.sdk.client import Client
from schemas.messages import Ticket
from tests.integration.services import broker, eventually, worker

PER_USER = ModelConfig(max_concurrency=2, limit_by="user", limit_per_value=1)


async def waiting(service: BrokerService, model: str, count: int) -> None:
    async def queued() -> bool:
        return service.scheduler.waiting(model) == count

    await eventually(queued, what=f"{count} waiting for {model}")


async def borrow_then_queue(
    service: BrokerService, client: Client
) -> tuple[Admission, Admission, asyncio.Future[Ticket], asyncio.Future[Ticket]]:
    """alice takes both slots (the second borrowed: nobody else waits); then alice, then bob queue."""
    first, second = client.admit(model="app", user="alice"), client.admit(model="app", user="alice")
    await first.acquire()
    await second.acquire()
    alice_more = asyncio.ensure_future(client.admit(model="app", user="alice").acquire())
    await waiting(service, "app", 1)
    bob = asyncio.ensure_future(client.admit(model="app", user="bob").acquire())
    await waiting(service, "app", 2)
    return first, second, alice_more, bob


async def test_a_user_borrows_idle_slots_and_a_user_within_the_cap_goes_first(
    nats_server: NatsServer, nc: NATS
) -> None:
    async with broker(nats_server.url, policy="fifo", models={"app": PER_USER}) as service:
        first, second, alice_more, bob = await borrow_then_queue(service, Client(nc))
        await first.release()
        assert (await asyncio.wait_for(bob, 10)).ticket_id  # bob is below his cap: before alice's earlier one
        await waiting(service, "app", 1)
        assert not alice_more.done()
        await second.release()
        assert (await asyncio.wait_for(alice_more, 10)).ticket_id  # only alice waits: she borrows again


async def test_reload_turns_limit_by_on(nats_server: NatsServer, nc: NATS) -> None:
    unlimited = BrokerConfig(nats_url=nats_server.url, policy="fifo", models={"app": ModelConfig(max_concurrency=2)})
    async with BrokerService(unlimited) as service:
        first, _, alice_more, bob = await borrow_then_queue(service, Client(nc))
        service.reload(BrokerConfig(nats_url=nats_server.url, policy="fifo", models={"app": PER_USER}))
        await first.release()
        await asyncio.wait_for(bob, 10)  # without the reload, FIFO would have given it to alice
        assert not alice_more.done()


async def test_limit_by_user_with_real_requests(nats_server: NatsServer, nc: NATS) -> None:
    engine = FakeEngine("fake", slots=2, tokens_per_s=20)
    async with (
        broker(nats_server.url, policy="fifo", limit_by="user", limit_per_value=1) as service,
        worker(nats_server.url, engine, "w1"),
    ):
        client = Client(nc)
        alice = [
            client.generate(f"alice {i}", model="fake", user="alice", max_tokens=400, stream=False) for i in range(3)
        ]
        alice_runs = [asyncio.ensure_future(alice[i].finish()) for i in range(2)]

        async def both_running() -> bool:
            return engine.generations == 2  # alice borrowed the second slot: nobody else waited

        await eventually(both_running, what="alice's two requests to run")
        alice_third = asyncio.ensure_future(alice[2].finish())
        await waiting(service, "fake", 1)
        bob = client.generate("bob", model="fake", user="bob", max_tokens=400, stream=False)
        bob_run = asyncio.ensure_future(bob.finish())
        await waiting(service, "fake", 2)
        await alice[0].cancel()

        async def bob_runs() -> bool:
            return {lease.user for lease in service.scheduler.pools["fake"].leases.values()} == {"alice", "bob"}

        await eventually(bob_runs, what="bob's request to take the freed slot")
        assert service.scheduler.waiting("fake") == 1 and not alice_third.done()
        for generation in (alice[1], alice[2], bob):
            await generation.cancel()
        await asyncio.gather(*alice_runs, alice_third, bob_run, return_exceptions=True)


@pytest.mark.parametrize(("min_share", "second_free_grant"), [(0.25, 5), (0.0, 7)])
async def test_min_share_serves_the_lowest_priority(
    nats_server: NatsServer, nc: NATS, min_share: float, second_free_grant: int
) -> None:
    """One slot; 6 priority-100 and 3 priority-1 admissions of equal cost wait. Plain WFQ gives the
    low class its second turn only after every high one; a 0.25 minimum share gives it 1 turn in 5."""
    models = {"app": ModelConfig(max_concurrency=1, min_share=min_share)}
    async with broker(nats_server.url, models=models) as service:
        client = Client(nc)
        holder = client.admit(model="app", user="holder")
        await holder.acquire()
        queued: list[tuple[str, Admission, asyncio.Future[Ticket]]] = []
        for user, priority in [("paid", 100)] * 6 + [("free", 1)] * 3:
            admission = client.admit(model="app", user=user, priority=priority, tokens=100)
            queued.append((user, admission, asyncio.ensure_future(admission.acquire())))
            await waiting(service, "app", len(queued))
        order: list[str] = []
        for _ in queued:
            await holder.release()

            async def next_granted() -> bool:
                return sum(task.done() for _, _, task in queued) == len(order) + 1

            await eventually(next_granted, what="the next ticket")
            user, holder, _ = next((u, a, t) for u, a, t in queued if t.done() and a.ticket is not None)
            order.append(user)
        await holder.release()
    assert [i for i, user in enumerate(order) if user == "free"][1] == second_free_grant, order
