"""`python -m broker --nats URL [--config FILE] …`: run the scheduler service alone; one option per
`BrokerConfig` field. SIGHUP re-reads the config (file, environment, flags) and applies limits and weights live."""

from __future__ import annotations

import asyncio
import signal

import click

from broker.config import BrokerConfig
from broker.service import BrokerService
from runtime.config_loading import ConfigError, ConfigSource, service_options
from runtime.lifecycle import run_until_signal
from runtime.logs import configure_logging


@click.command()
@service_options(BrokerConfig, "broker", "broker")
def main(source: ConfigSource[BrokerConfig]) -> None:
    config = source.load_or_exit()
    log = configure_logging("broker", config.log_level)
    service = BrokerService(config, log)

    def reload() -> None:
        try:
            service.reload(source.load())
        except ConfigError as exc:
            log.error("config reload rejected, keeping the running config", error=str(exc))

    async def start() -> None:
        await service.start()
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)

    asyncio.run(run_until_signal(start, service.stop))


if __name__ == "__main__":
    main()
