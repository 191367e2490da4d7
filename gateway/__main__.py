"""`python -m gateway --nats URL`: run the API gateway alone (HTTP Ollama/OpenAI + NATS micro
service `iris`); one option per `GatewayConfig` field, and `--api-key` for keys given in the clear."""

from __future__ import annotations

import click
import msgspec
import uvloop

from gateway.config import GatewayConfig, parse_key_spec
from gateway.service import GatewayService
from runtime.config_loading import ConfigSource, service_options
from runtime.lifecycle import run_until_signal
from runtime.logs import configure_logging


async def serve(config: GatewayConfig) -> None:
    log = configure_logging("gateway", config.log_level)
    service = GatewayService(config, log)
    await run_until_signal(service.start, service.stop)


@click.command()
@service_options(GatewayConfig, "gateway", "gateway")
@click.option(
    "--api-key",
    "key_specs",
    multiple=True,
    envvar="IRIS_API_KEYS",
    help="KEY[:workload[:max_priority]] for local use (repeatable; env IRIS_API_KEYS, space separated).",
)
def main(source: ConfigSource[GatewayConfig], key_specs: tuple[str, ...]) -> None:
    config = source.load_or_exit()
    try:
        local_keys = [parse_key_spec(spec) for spec in key_specs]
    except ValueError as exc:
        raise SystemExit(f"gateway: {exc}") from None
    config = msgspec.structs.replace(config, api_keys=[*config.api_keys, *local_keys])
    uvloop.run(serve(config))


if __name__ == "__main__":
    main()
