"""The chaos harness (deploy/chaos.py, deploy/stack.py) judges the compose stack: what it concludes about a
reply or a killed part must hold without docker, or a run against the stack reports nonsense."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from runtime import clock
from schemas import headers as h

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "deploy"))
import stack  # noqa: E402
import taps  # noqa: E402


@pytest.mark.parametrize("service", ["broker-a", "worker-1", "gateway"])
def test_the_service_of_a_process_id_is_its_compose_host_name(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: service)
    process_id = clock.node_id.__wrapped__()  # the id a broker or worker in that container takes
    assert stack.service_of(process_id) == service


def reply(request_id: str, kind: str, body: dict[str, object], **extra: str) -> Msg:
    headers = {h.REQUEST_ID: request_id, h.KIND: kind, **extra}
    return Msg(None, subject="_INBOX.abc.def", data=json.dumps(body).encode(), headers=headers)  # type: ignore[arg-type]


def test_a_clients_direct_get_of_the_stored_final_is_not_a_second_reply() -> None:
    tap = taps.Tap()
    asyncio.run(tap.on_reply(reply("r1", h.KIND_RESULT, {"text": "blue"})))
    stored_copy = reply("r1", h.KIND_RESULT, {"text": "blue"}, **{h.NATS_SUBJECT: "iris.answer.r1"})
    asyncio.run(tap.on_reply(stored_copy))
    assert tap.seen["r1"].finals == 1


def test_taps_count_a_reply_once_across_nodes_but_a_real_second_reply_twice() -> None:
    tapped = taps.Taps(["nats://a", "nats://b", "nats://c"])
    first, second, down = tapped.taps
    for tap in (first, second):  # the third node was down while r1 was answered
        asyncio.run(tap.on_reply(reply("r1", "chunk", {"index": 0, "text": "b", "attempt": 1})))
        asyncio.run(tap.on_reply(reply("r1", h.KIND_RESULT, {"text": "b"})))
    for _ in range(2):  # r2 got its result twice: every tap that was up saw both
        asyncio.run(second.on_reply(reply("r2", h.KIND_RESULT, {"text": "c"})))
    asyncio.run(down.on_reply(reply("r2", h.KIND_RESULT, {"text": "c"})))
    assert (tapped["r1"].finals, tapped["r2"].finals) == (1, 2)
    assert tapped.ids() == {"r1", "r2"}
    assert tapped["r3"].kinds == []  # never seen: no final
