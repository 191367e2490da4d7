"""`python -m broker --nats URL [--config FILE] …`: run the scheduler service alone.
SIGHUP re-reads the config (file, environment, flags) and applies limits and weights live."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import click

from broker.config import BrokerConfig
from broker.service import BrokerService
from runtime.config_loading import ConfigError, load_config, load_config_or_exit
from runtime.lifecycle import run_until_signal
from runtime.logs import configure_logging


@click.command()
@click.option("--nats", "nats_url", help="NATS server URL.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--policy", type=click.Choice(["wfq", "fifo"]))
@click.option("--max-concurrency", type=int, help="Leases per model at once (0 = all worker slots).")
@click.option(
    "--worker-timeout", "worker_timeout_s", type=float, help="Seconds without heartbeat before a worker is dead."
)
@click.option("--max-queue", type=int, help="Waiting requests per workload (0 = no limit).")
@click.option("--max-inflight", "max_inflight_s", type=float, help="Seconds a lease may run before it is cut off.")
@click.option("--max-attempts", type=int, help="Workers lost in a row on one request before it is dead-lettered.")
@click.option("--replicas", type=int, help="Stream and lease bucket replicas (3 on a 3-node cluster).")
@click.option("--broker-id", help="Name in the leader election (default: <hostname>-<pid>).")
@click.option("--leader-ttl", "leader_ttl_s", type=float, help="Seconds a silent leader keeps the lead (default 2).")
@click.option("--metrics-host", help="Address of the Prometheus /metrics endpoint (default 127.0.0.1).")
@click.option("--metrics-port", type=int, help="Port of the Prometheus /metrics endpoint (0 = off).")
@click.option("--limit-by", type=click.Choice(["user", "workload"]), help="Cap leases per user or per workload.")
@click.option("--limit-per-value", type=int, help="Leases per --limit-by value before borrowing idle capacity.")
@click.option("--min-share", type=float, help="WFQ: the lowest class runs at least this fraction as fast as the top.")
@click.option(
    "--priority-mode",
    type=click.Choice(["share", "strict"]),
    help="WFQ: priority multiplies shares across workloads (share), or higher bands always first (strict).",
)
@click.option("--log-level")
def main(config_path: Path | None, **flags: object) -> None:
    config = load_config_or_exit(BrokerConfig, "broker", config_path, flags, "broker")
    log = configure_logging("broker", config.log_level)
    service = BrokerService(config, log)

    def reload() -> None:
        try:
            service.reload(load_config(BrokerConfig, "broker", path=config_path, flags=flags))
        except ConfigError as exc:
            log.error("config reload rejected, keeping the running config", error=str(exc))

    async def start() -> None:
        await service.start()
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)

    asyncio.run(run_until_signal(start, service.stop))


if __name__ == "__main__":
    main()
