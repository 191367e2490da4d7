"""Talk to Iris with plain nats-py and no Iris code: publish a request, read chunks and the result.

    python examples/raw_nats_client.py "Why is the sky blue?" --model gemma3-270m --nats nats://127.0.0.1:4222

Everything here is the wire contract (schemas/, docs/architecture.md): subject `iris.req.<model>.<workload>`, headers
`Iris-Reply-To` (JetStream drops the publisher's own reply subject), `Iris-Deadline`, `Iris-Priority`,
`Nats-Msg-Id`, and replies typed by header `Iris-Kind`.

With `--key` the request has an idempotency key: run it twice and the second run prints the first one's
answer without running it again. When the key was used already (the publish ack says `duplicate`), the
replies come on the request's live subject `iris.live.<key>` (its rest, while it runs), and its final is
read from stream `IRIS_ANSWERS` by a direct get of subject `iris.answer.<key>`: a client that lost its
connection reads what it missed the same way.
"""

import argparse
import asyncio
import json
import sys
import time
import uuid

import nats


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("prompt")
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--workload", default="default")
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--key", help="idempotency key (Nats-Msg-Id): [A-Za-z0-9_-]+")
    args = parser.parse_args()

    nc = await nats.connect(args.nats)
    inbox = nc.new_inbox()
    replies = await nc.subscribe(inbox)
    key = args.key or uuid.uuid4().hex
    deadline_ms = int(time.time() * 1000) + 60_000
    headers = {
        "Iris-Reply-To": inbox,
        "Iris-Deadline": str(deadline_ms),
        "Iris-Priority": "1",
        "Nats-Msg-Id": key,
        "Nats-TTL": "60",
    }
    body = json.dumps({"prompt": args.prompt, "max_tokens": args.max_tokens, "temperature": 0}).encode()
    ack = await nc.jetstream().publish(f"iris.req.{args.model}.{args.workload}", body, headers=headers)
    if ack.duplicate:  # asked before: follow that request, and read its final if it has one already
        replies = await nc.subscribe(f"iris.live.{key}")
        stored = await nc.request(f"$JS.API.DIRECT.GET.IRIS_ANSWERS.iris.answer.{key}", b"", timeout=5)
        if not (stored.headers or {}).get("Status"):  # "404": not finished yet
            return print_reply(stored.headers["Iris-Kind"], json.loads(stored.data))

    code = None
    while code is None:
        msg = await replies.next_msg(timeout=90)
        code = print_reply(msg.headers.get("Iris-Kind"), json.loads(msg.data))
    await nc.close()
    return code


def print_reply(kind: str | None, reply: dict) -> int | None:
    """Print one reply; the exit code once it was the final one, else None."""
    if kind == "queued":
        print(f"[queued at position {reply['position']}, eta {reply['eta_s']} s]", file=sys.stderr)
    elif kind == "chunk":
        print(reply["text"], end="", flush=True)
    elif kind == "result":
        print(
            f"\n[result: {reply['finish_reason']}, {reply['usage']['completion_tokens']} tokens, "
            f"worker {reply['worker']}]"
        )
        print("RESULT " + json.dumps(reply))
        return 0
    elif kind == "error":
        print(f"\n[error {reply['code']}: {reply['message']}]", file=sys.stderr)
        return 1
    return None


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
