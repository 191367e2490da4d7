"""Two brokers, one leading through the `IRIS_BROKERS` key. `kill -9` of the leader under a load of 200
requests: the standby takes the lead, rebuilds from the stream and `IRIS_LEASES` (checked against worker
heartbeats), and every request gets exactly one result; across both workers each ran exactly once."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS

from iris.launch.nats_server import NatsServer
from iris.sdk.client import Client
from tests.conftest import Processes
from tests.integration.raw_nats import good_headers, raw_request
from tests.integration.services import SteadyLoad, eventually, wait_for_models, wait_stream_empty

REQUESTS = 200
IN_FLIGHT = 16


def logged(processes: Processes, name: str, text: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return text in processes.log(name)

    return check


async def leader_and_standby(processes: Processes, url: str) -> subprocess.Popen[bytes]:
    """Broker a leading, broker b standing by; a's process."""
    leader = processes.start("broker-a", "broker", "--nats", url, "--broker-id", "a")
    await eventually(logged(processes, "broker-a", '"leading"'), what="broker a leading")
    processes.start("broker-b", "broker", "--nats", url, "--broker-id", "b")
    await eventually(logged(processes, "broker-b", '"broker started"'), what="broker b standing by")
    return leader


async def test_leading_broker_killed_under_load(nats_server: NatsServer, nc: NATS, processes: Processes) -> None:
    url = nats_server.url
    leader = await leader_and_standby(processes, url)
    assert '"leading"' not in processes.log("broker-b")  # one leader at a time
    processes.start_fake_worker(url, "w1", tokens_per_s=100)
    processes.start_fake_worker(url, "w2", tokens_per_s=100)
    client = Client(nc)
    await wait_for_models(client, "fake")
    load = SteadyLoad(client, REQUESTS, IN_FLIGHT, max_tokens=10, key_prefix="ha")
    await load.under_way(0.25)
    leader.kill()
    done_at_kill = len(load.outcomes)
    await eventually(logged(processes, "broker-b", '"leading"'), what="broker b taking the lead")
    outcomes = await load.finished()

    assert len(outcomes) == REQUESTS
    assert all(o.startswith("result:10:") for o in outcomes.values()), sorted(set(outcomes.values()))
    assert done_at_kill + IN_FLIGHT < REQUESTS  # so broker b leased the rest: a was dead
    await wait_stream_empty(nc)

    def runs() -> int:
        return processes.log("w1").count('"request done"') + processes.log("w2").count('"request done"')

    async def all_logged() -> bool:
        return runs() >= REQUESTS

    await eventually(all_logged, what="every run logged")
    assert runs() == REQUESTS  # each request ran exactly once across the failover


async def test_a_request_the_frozen_leader_never_read_is_dead_lettered_by_the_next(
    nats_server: NatsServer, nc: NATS, processes: Processes
) -> None:
    """The standby reads an unparseable request ahead as the leader does, but only a leader dead-letters: when
    the leader froze before it got there, the next leader must do it (it used to start after every sequence
    the standby had read, so the client never got its error and the message stayed in the stream)."""
    url = nats_server.url
    leader = await leader_and_standby(processes, url)
    leader.send_signal(signal.SIGSTOP)  # alive to the server, deaf to the stream: its key runs out
    try:
        headers = {**good_headers(nc), "Iris-Priority": "many"}
        reply = await raw_request(nc, "iris.req.fake.default", b'{"prompt": "hi"}', headers)
    finally:
        leader.kill()
    assert reply["kind"] == "error" and reply["code"] == "invalid_request" and "Iris-Priority" in str(reply), reply
    await eventually(logged(processes, "broker-b", '"leading"'), what="broker b leading")
    await wait_stream_empty(nc)
