"""`python -m gateway --nats URL`: run the API gateway alone (HTTP Ollama/OpenAI + NATS micro service `iris`)."""

from __future__ import annotations

from pathlib import Path

import click
import msgspec
import uvloop

from gateway.config import GatewayConfig, parse_key_spec
from gateway.service import GatewayService
from runtime.config_loading import load_config_or_exit
from runtime.lifecycle import run_until_signal
from runtime.logs import configure_logging


async def serve(config: GatewayConfig) -> None:
    log = configure_logging("gateway", config.log_level)
    service = GatewayService(config, log)
    await run_until_signal(service.start, service.stop)


@click.command()
@click.option("--nats", "nats_url", help="NATS server URL.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--http-host", help="Address the HTTP API binds (loopback serves keyless requests).")
@click.option("--http-port", type=int, help="HTTP port; 0 = no HTTP API.")
@click.option("--require-key/--no-require-key", default=None, help="Require an API key even on loopback.")
@click.option(
    "--api-key",
    "api_keys",
    multiple=True,
    envvar="IRIS_API_KEYS",
    help="KEY[:workload[:max_priority]] for local use (repeatable; env IRIS_API_KEYS, space separated).",
)
@click.option("--max-in-flight", type=int)
@click.option("--log-level")
def main(config_path: Path | None, api_keys: tuple[str, ...], **flags: object) -> None:
    config = load_config_or_exit(GatewayConfig, "gateway", config_path, flags, "gateway")
    try:
        local_keys = [parse_key_spec(spec) for spec in api_keys]
    except ValueError as exc:
        raise SystemExit(f"gateway: {exc}") from None
    config = msgspec.structs.replace(config, api_keys=[*config.api_keys, *local_keys])
    uvloop.run(serve(config))


if __name__ == "__main__":
    main()
