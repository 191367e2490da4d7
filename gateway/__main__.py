"""`python -m gateway --nats URL`: run the API gateway alone (NATS micro service `iris`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click
import nats

from gateway.config import GatewayConfig
from gateway.micro_api import MicroApi
from schemas.config_loading import load_config_or_exit
from schemas.lifecycle import run_until_signal
from schemas.logs import configure_logging


async def serve(config: GatewayConfig) -> None:
    log = configure_logging("gateway", config.log_level)
    nc = await nats.connect(config.nats_url, name="iris-gateway", max_reconnect_attempts=-1)
    api = MicroApi(nc, config, log)

    async def start() -> None:
        await api.start()
        log.info("gateway started", nats=config.nats_url, service="iris")

    async def stop() -> None:
        await api.stop()
        await nc.drain()
        log.info("gateway stopped")

    await run_until_signal(start, stop)


@click.command()
@click.option("--nats", "nats_url", help="NATS server URL.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--log-level")
def main(config_path: Path | None, **flags: object) -> None:
    config = load_config_or_exit(GatewayConfig, "gateway", config_path, flags, "gateway")
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
