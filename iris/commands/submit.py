"""`iris submit PROMPT`: send one prompt through Iris and stream the answer to the terminal."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click

from iris.commands.options import nats_option
from schemas.errors import IrisError


@click.command()
@click.argument("prompt")
@nats_option
@click.option("--model", help="Model name (default: the only model being served).")
@click.option("--workload", default="default", show_default=True)
@click.option("--priority", type=click.IntRange(1, 100), default=1, show_default=True)
@click.option("--user", help="Fairness key inside the workload.")
@click.option("--deadline", "deadline_s", type=float, default=120.0, show_default=True, help="Seconds.")
@click.option("--max-tokens", type=int, default=256, show_default=True)
@click.option("--temperature", type=float, default=0.8, show_default=True)
@click.option("--seed", type=int)
@click.option("--idempotency-key", help="Nats-Msg-Id: the same key never runs twice.")
@click.option("--chat/--raw", default=True, show_default=True, help="Send as a chat message or a raw prompt.")
def submit(prompt: str, nats_url: str, chat: bool, **options: Any) -> None:
    """Send PROMPT through Iris and stream the answer to the terminal."""
    try:
        asyncio.run(_submit(prompt, nats_url, chat, options))
    except IrisError as exc:
        click.echo(f"\niris: {exc.code.value}: {exc.message}", err=True)
        sys.exit(1)
    except OSError as exc:
        click.echo(f"iris: cannot reach NATS at {nats_url}: {exc}", err=True)
        sys.exit(1)


async def _submit(prompt: str, nats_url: str, chat: bool, options: dict[str, Any]) -> None:
    import nats

    from iris.sdk.client import Client

    nc = await nats.connect(nats_url, max_reconnect_attempts=2, connect_timeout=3)
    async with Client(nc, owns_connection=True) as client:
        if chat:
            generation = client.generate(messages=[{"role": "user", "content": prompt}], **options)
        else:
            generation = client.generate(prompt, **options)
        attempt = 1
        async for chunk in generation:
            if chunk.attempt != attempt:
                attempt = chunk.attempt
                goes_on = "goes on" if chunk.continued else "restarts"
                click.echo(f"\n[a worker was lost; the answer {goes_on}, attempt {attempt}]", err=True)
            click.echo(chunk.text, nl=False)
        result = generation.result
        assert result is not None
        click.echo("")
        click.echo(
            f"[{result.finish_reason}; {result.usage.completion_tokens} tokens; "
            f"queued {result.timings.queued_ms:.0f} ms; ran {result.timings.run_ms:.0f} ms on {result.worker}]",
            err=True,
        )
