"""Admission mode through a real nats-server: tickets wait in the fair queue (with real requests), a
release frees the slot for the next, an unreleased ticket expires, a ticket survives a broker restart,
and bad input gets a typed error."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from nats.aio.client import Client as NATS

from broker.config import ModelConfig
from broker.service import BrokerService
from gpu_worker.engines.fake import FakeEngine
from iris.launch.nats_server import NatsServer
from iris.sdk.client import Client
from schemas.errors import DeadlineExceeded, DeadlineUnmeetable, InvalidRequest, NoCapacity, QueueFull
from schemas.messages import Ticket
from tests.integration.services import broker, eventually, wait_stream_empty, worker

APP = {"app": ModelConfig(max_concurrency=1)}  # an admission model: no workers, one slot


async def waiting(service: BrokerService, model: str, count: int) -> None:
    async def queued() -> bool:
        return service.scheduler.waiting(model) == count

    await eventually(queued, what=f"{count} waiting for {model}")


async def test_release_frees_the_slot_for_the_next(nats_server: NatsServer, nc: NATS) -> None:
    async with broker(nats_server.url, models=APP) as service:
        client = Client(nc)
        first = client.admit(model="app", user="alice")
        ticket = await first.acquire()
        assert ticket.model == "app" and ticket.expires_ms > ticket.granted_ms
        second = asyncio.ensure_future(client.admit(model="app", user="bob").acquire())
        await waiting(service, "app", 1)
        assert not second.done() and service.scheduler.running("app") == 1
        with pytest.raises(InvalidRequest, match="completion_tokens"):
            first.report_usage(10, -1)
        first.report_usage(prompt_tokens=12, completion_tokens=40)
        assert await first.release() is True
        next_ticket = await asyncio.wait_for(second, 10)

        async def usage_learned() -> bool:
            return service.scheduler.pools["app"].completion_tokens_ema.get("default") == 40

        await eventually(usage_learned, what="the reported usage to reach the scheduler")
        assert next_ticket.ticket_id != ticket.ticket_id
        assert await first.release() is False  # released once only


async def test_ticket_waits_behind_real_requests(nats_server: NatsServer, nc: NATS) -> None:
    """One worker slot: a running request, then a ticket, then another request; the ticket gets the slot
    when the first request ends, and the request behind it only when the ticket is released."""
    engine = FakeEngine("fake", slots=1, tokens_per_s=20)
    async with broker(nats_server.url, policy="fifo") as service, worker(nats_server.url, engine, "w1"):
        client = Client(nc)
        running = client.generate("occupy", model="fake", max_tokens=500)
        chunks = aiter(running)  # held: an abandoned stream cancels its request
        await asyncio.wait_for(anext(chunks), 30)
        admission = client.admit(model="fake", workload="app")
        ticket_task = asyncio.ensure_future(admission.acquire())
        await waiting(service, "fake", 1)
        behind = asyncio.ensure_future(client.complete("behind the ticket", model="fake", max_tokens=2))
        await waiting(service, "fake", 2)
        await running.cancel()
        ticket = await asyncio.wait_for(ticket_task, 10)
        assert ticket.model == "fake" and ticket.workload == "app"
        await waiting(service, "fake", 1)  # the slot is the ticket's: the worker is idle, the request waits
        assert not behind.done() and engine.generations == 1
        await admission.release()
        assert (await asyncio.wait_for(behind, 10)).usage.completion_tokens == 2
        await wait_stream_empty(nc)


async def test_unreleased_ticket_expires_at_max_inflight(nats_server: NatsServer, nc: NATS) -> None:
    models = {"app": ModelConfig(max_concurrency=1, max_inflight_s=1.0)}
    async with broker(nats_server.url, models=models):
        client = Client(nc)
        vanished = client.admit(model="app")
        ticket = await vanished.acquire()  # never released: the app "vanished"
        assert ticket.expires_ms - ticket.granted_ms == 1000
        next_ticket = await asyncio.wait_for(client.admit(model="app").acquire(), 10)
        assert next_ticket.granted_ms >= ticket.expires_ms
        assert await vanished.release() is False  # it had expired


async def test_ticket_survives_a_broker_restart(nats_server: NatsServer, nc: NATS) -> None:
    client = Client(nc)
    async with broker(nats_server.url, models=APP):
        held = client.admit(model="app")
        seq = (await held.acquire()).stream_seq
    async with broker(nats_server.url, models=APP) as restarted:
        second = asyncio.ensure_future(client.admit(model="app").acquire())
        await waiting(restarted, "app", 1)

        async def still_held() -> bool:  # the restored ticket keeps the slot past the start-up grace
            scheduler = restarted.scheduler
            dispatching = time.time() * 1000 - scheduler.started_ms > scheduler.limits.startup_grace_ms + 500
            return dispatching and list(scheduler.pools["app"].leases) == [seq] and not second.done()

        await eventually(still_held, what="the restored ticket to hold the slot")
        assert await held.release() is True
        assert isinstance(await asyncio.wait_for(second, 10), Ticket)


async def test_waiting_past_the_deadline_and_a_full_queue(nats_server: NatsServer, nc: NATS) -> None:
    async with broker(nats_server.url, models={"app": ModelConfig(max_concurrency=1, max_queue=1)}) as service:
        client = Client(nc)
        async with client.admit(model="app"):
            with pytest.raises(DeadlineExceeded):
                await client.admit(model="app", deadline_s=1.0).acquire()
            waiter = asyncio.ensure_future(client.admit(model="app").acquire())
            await waiting(service, "app", 1)
            with pytest.raises(QueueFull) as full:
                await client.admit(model="app").acquire()
            assert full.value.retry_after_s is not None and full.value.retry_after_s >= 1
        assert isinstance(await asyncio.wait_for(waiter, 10), Ticket)  # released on leaving the block


async def test_a_wait_longer_than_the_deadline_is_refused_at_once(nats_server: NatsServer, nc: NATS) -> None:
    async with broker(nats_server.url, models=APP):
        client = Client(nc)
        async with client.admit(model="app"):
            await asyncio.sleep(1.0)  # the app's own work: tickets are held about a second
        async with client.admit(model="app"):
            with pytest.raises(DeadlineUnmeetable) as unmeetable:
                await client.admit(model="app", deadline_s=0.5).acquire()
        assert unmeetable.value.retry_after_s is not None and unmeetable.value.retry_after_s >= 1.0


async def test_bad_admissions_get_typed_errors(nats_server: NatsServer, nc: NATS) -> None:
    async with broker(nats_server.url, models=APP, worker_timeout_s=0.5) as service:
        client = Client(nc)
        with pytest.raises(InvalidRequest, match="priority"):
            client.admit(model="app", priority=0)

        async def warmed_up() -> bool:  # before that, workers of a new model may still be starting
            return time.time() * 1000 - service.scheduler.started_ms > service.scheduler.limits.worker_timeout_ms

        await eventually(warmed_up, what="the broker's start-up window to pass")
        with pytest.raises(NoCapacity):
            await client.admit(model="nomodel", deadline_s=5).acquire()  # no workers, no max_concurrency
        reply = await nc.request("iris.admit.app", b'{"workload": "w", "tokens": -1}', timeout=5)
        assert reply.headers and reply.headers["Iris-Kind"] == "error"
        error = json.loads(reply.data)
        assert error["code"] == "invalid_request" and "$.tokens" in error["message"]
        reply = await nc.request("iris.admit.app", b'{"colour": "red"}', timeout=5)
        assert "colour" in json.loads(reply.data)["message"]
        reply = await nc.request("iris.admit.end", b'{"ticket_id": "no spaces"}', timeout=5)
        assert "$.ticket_id" in json.loads(reply.data)["message"]


async def test_admission_is_a_nats_micro_service(nats_server: NatsServer, nc: NATS) -> None:
    async with broker(nats_server.url, models=APP):
        info = json.loads((await nc.request("$SRV.INFO.iris-admit", b"", timeout=5)).data)
    assert {e["subject"] for e in info["endpoints"]} == {"iris.admit.*", "iris.admit.end"}
