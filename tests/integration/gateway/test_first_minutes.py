"""The first five minutes with `iris up`: the README's curl example, the official `ollama` and `openai`
clients with no token limit, and chat through the fallback template (the embedded model has none), all on
the real embedded model, as a user runs them. Without a limit an answer may run to the end of the slot's
context, so the turn checks sample greedily (temperature 0) to keep the test's time bounded and repeatable."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import urllib.request
from pathlib import Path

import ollama
import openai
import pytest

from iris.launch.nats_server import free_port
from tests.integration.commands import IRIS, wait_for_line

pytestmark = pytest.mark.slow  # the real model (or a cluster) in real processes

README_BODY = b'{"model": "gemma3:270m", "prompt": "Why is the sky blue?"}'
NEW_TURN = re.compile(r"\b(User|Assistant|System):")
KEY = "first-minutes-key"  # the openai client always sends a key; keyless on loopback is Ollama's way
QUESTIONS = ["Name three colors.", "Why is the sky blue?", "What is two plus two?", "Say hello."]


def readme_example(base: str) -> str:
    """The README's curl call, answered and done. It samples (no seed, Ollama's default temperature), and the
    base model's first draw through the fallback template is a new "User:" turn about one time in fifty
    (6 of 300 seeds here), which ends the answer empty; three empty answers in a row is a broken example."""
    with urllib.request.urlopen(urllib.request.Request(f"{base}/api/generate", data=README_BODY), timeout=120) as r:
        assert r.status == 200
        lines = [json.loads(line) for line in r.read().splitlines()]
    assert lines[-1]["done"] and lines[-1]["done_reason"] in ("stop", "length")
    return "".join(line.get("response", "") for line in lines).strip()


def test_readme_example_and_clients_without_a_token_limit(tmp_path: Path) -> None:
    port, http_port = free_port(), free_port()
    out = tmp_path / "up.out"
    up = subprocess.Popen(
        [*IRIS, "up", "--state-dir", str(tmp_path / "state"), "--nats-port", str(port), "--slots", "2"]
        + ["--http-port", str(http_port), "--metrics-port", "0", "--api-key", KEY],
        stdout=out.open("wb"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{http_port}"
    try:
        wait_for_line(out, "Ctrl-C stops everything", up)
        assert "/api/generate" in out.read_text()  # the example `iris up` prints is the one tried here
        answers = [readme_example(base)]
        while not answers[-1] and len(answers) < 3:  # sampled: see readme_example
            answers.append(readme_example(base))
        assert answers[-1], answers

        client = ollama.Client(host=base, timeout=120)
        generated = client.generate(model="gemma3:270m", prompt="Why is the sky blue?")
        # Sampled too: now and then its answer is empty (see readme_example).
        assert generated.done and generated.done_reason in ("stop", "length")
        for question in QUESTIONS:
            chat = client.chat(
                model="gemma3:270m", messages=[{"role": "user", "content": question}], options={"temperature": 0}
            )
            assert chat.done_reason in ("stop", "length") and not NEW_TURN.search(chat.message.content or "")

        oai = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=120)
        for question in QUESTIONS:
            answer = oai.chat.completions.create(
                model="gemma3-270m", messages=[{"role": "user", "content": question}], temperature=0
            )
            text = answer.choices[0].message.content or ""
            assert answer.choices[0].finish_reason in ("stop", "length") and not NEW_TURN.search(text)
        streamed = oai.chat.completions.create(
            model="gemma3-270m", messages=[{"role": "user", "content": QUESTIONS[1]}], stream=True, seed=7
        )
        assert not NEW_TURN.search("".join(c.choices[0].delta.content or "" for c in streamed if c.choices))
        completion = oai.completions.create(model="gemma3-270m", prompt="The capital of France is")
        assert completion.usage is not None and 0 < completion.usage.completion_tokens <= 16  # OpenAI's default
    finally:
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
