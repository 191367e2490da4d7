"""`kill -9` of a worker mid-answer: the other worker continues each answer it was running from the stored
progress (`runtime.progress`), so every client's streamed text equals an uninterrupted run's, its chunk
indexes run on without a gap or a repeat, and no reader sees its answer restart. FakeEngine for the fault
mechanics under load, the tiny random-weight GGUF on llama.cpp for the model's own tokens (temperature 0)."""

from __future__ import annotations

import pytest
from nats.aio.client import Client as NATS

from gpu_worker.engines.fake import FakeEngine
from gpu_worker.engines.protocol import Piece, StopSignal
from iris.bench.continuation import Answer, Load, continued_tokens, judge, kill_when
from iris.launch.nats_server import NatsServer
from iris.sdk.client import Client
from schemas.messages import GenerateRequest
from schemas.subjects import ANSWER_STREAM, PROGRESS_FILTER
from tests.conftest import Processes
from tests.integration.services import eventually, wait_for_models, wait_stream_empty

MAX_TOKENS = 64


async def fake_text(prompt: str) -> str:
    request = GenerateRequest(prompt=prompt, max_tokens=MAX_TOKENS, temperature=0)
    return "".join([e.text async for e in FakeEngine("fake").generate(request, StopSignal()) if isinstance(e, Piece)])


async def no_progress_left(nc: NATS) -> bool:
    info = await nc.jetstream().stream_info(ANSWER_STREAM, subjects_filter=PROGRESS_FILTER)
    return not info.state.subjects


async def test_killed_workers_answers_continue_on_the_other(
    nats_server: NatsServer, nc: NATS, processes: Processes
) -> None:
    url = nats_server.url
    processes.start("broker", "broker", "--nats", url, "--worker-timeout", "5")  # a loaded machine beats late
    fake = ["--engine", "fake", "--model-name", "fake", "--fake-tps", "100", "--slots", "4"]
    victim = processes.start("w1", "gpu_worker", "--nats", url, *fake, "--worker-id", "w1")
    processes.start("w2", "gpu_worker", "--nats", url, *fake, "--worker-id", "w2")
    client = Client(nc)
    await wait_for_models(client, "fake")
    prompts = [f"request {i}" for i in range(40)]
    load = Load(client, "fake", prompts, "cont", MAX_TOKENS, in_flight=8)
    await kill_when(victim, lambda: load.mid_way(answers=6, chunks=5))  # of 8 running (4 a worker): 2+ on w1
    answers = await load.finished()
    reference = [Answer(text=await fake_text(p)) for p in prompts]

    verdict = judge(reference, answers, MAX_TOKENS)
    assert verdict["text_equals_uninterrupted"] == len(prompts), verdict
    assert verdict["restarts_seen"] == 0 and verdict["reruns"] >= 1, verdict
    assert verdict["reruns_continued"] >= 1, verdict  # (one offered but not yet started has no progress)
    assert all(a.indexes == list(range(MAX_TOKENS)) for a in answers)
    runs, tokens = continued_tokens(processes.log("w2"))
    assert runs == verdict["reruns_continued"] and 0 < tokens < runs * MAX_TOKENS
    await wait_stream_empty(nc)
    await eventually(lambda: no_progress_left(nc), what="every progress record purged with its final")


@pytest.mark.slow
async def test_the_real_model_continues_token_for_token(
    nats_server: NatsServer, nc: NATS, processes: Processes, tiny_mistral_model: str
) -> None:
    """One slot per worker: a batch's composition moves near-tie argmaxes of a random-weight model (two
    undisturbed runs of the same prompts at 2 slots differ), which is not what this test is about."""
    url = nats_server.url
    processes.start("broker", "broker", "--nats", url, "--worker-timeout", "5")  # a loaded machine beats late
    llama = ["--model", tiny_mistral_model, "--model-name", "tiny", "--slots", "1", "--threads", "1"]
    victim = processes.start("w1", "gpu_worker", "--nats", url, *llama, "--worker-id", "w1")
    processes.start("w2", "gpu_worker", "--nats", url, *llama, "--worker-id", "w2")
    client = Client(nc)
    await wait_for_models(client, "tiny")
    prompts = [f"The lighthouse keeper {i} counted the ships and wrote" for i in range(12)]
    reference = await Load(client, "tiny", prompts, "ref", 320, in_flight=4).finished()
    load = Load(client, "tiny", prompts, "cont", 320, in_flight=4)
    await kill_when(victim, lambda: load.mid_way(answers=2, chunks=20))  # the two running (one a worker)
    answers = await load.finished()

    verdict = judge(reference, answers, 320)
    differ = [
        (a.attempt, a.continued, _split(r.text, a.text))
        for r, a in zip(reference, answers, strict=True)
        if r.text != a.text
    ]
    assert verdict["text_equals_uninterrupted"] == len(prompts), (verdict, differ)
    assert verdict["restarts_seen"] == 0 and verdict["reruns_continued"] >= 1, verdict
    assert continued_tokens(processes.log("w2"))[1] > 0


def _split(expected: str, got: str) -> tuple[int, str, str]:
    """Where two texts part, and what follows there in each."""
    at = next((i for i, (x, y) in enumerate(zip(expected, got, strict=False)) if x != y), min(len(expected), len(got)))
    return at, expected[at : at + 20], got[at : at + 20]
