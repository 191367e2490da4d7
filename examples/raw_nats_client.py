"""Talk to Iris with plain nats-py and no Iris code: publish a request, read chunks and the result.

    python examples/raw_nats_client.py "Why is the sky blue?" --model gemma3-270m --nats nats://127.0.0.1:4222

Everything here is the wire contract (schemas/, docs/architecture.md): subject `iris.req.<model>.<workload>`, headers
`Iris-Reply-To` (JetStream drops the publisher's own reply subject), `Iris-Deadline`, `Iris-Priority`,
`Nats-Msg-Id`, and replies typed by header `Iris-Kind`.
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
    args = parser.parse_args()

    nc = await nats.connect(args.nats)
    inbox = nc.new_inbox()
    replies = await nc.subscribe(inbox)
    deadline_ms = int(time.time() * 1000) + 60_000
    headers = {
        "Iris-Reply-To": inbox,
        "Iris-Deadline": str(deadline_ms),
        "Iris-Priority": "1",
        "Nats-Msg-Id": uuid.uuid4().hex,
        "Nats-TTL": "60",
    }
    body = json.dumps({"prompt": args.prompt, "max_tokens": args.max_tokens, "temperature": 0}).encode()
    await nc.jetstream().publish(f"iris.req.{args.model}.{args.workload}", body, headers=headers)

    code = 0
    while True:
        msg = await replies.next_msg(timeout=90)
        kind = msg.headers.get("Iris-Kind")
        reply = json.loads(msg.data)
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
            break
        elif kind == "error":
            print(f"\n[error {reply['code']}: {reply['message']}]", file=sys.stderr)
            code = 1
            break
    await nc.close()
    return code


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
