"""The gateway service: one NATS connection behind every edge (NATS micro API and HTTP).

Start order: model directory (heartbeats), then the edges (the status page's hub before HTTP); stop order
is the reverse, and the HTTP server first lets open answers finish (bounded), so a SIGTERM drains instead
of cutting streams (the hub ends its event streams first: they would never finish on their own).
"""

from __future__ import annotations

import structlog
from nats.aio.client import Client as NATS

from gateway.broker_leader import BrokerLeader
from gateway.config import GatewayConfig
from gateway.forwarding import Forwarder
from gateway.http.answer import HttpContext
from gateway.http.app import HttpServer, build_app
from gateway.http.status.hub import StatusHub
from gateway.identity import KeyRing
from gateway.metrics import GatewayMetrics
from gateway.micro_api import MicroApi
from gateway.model_cards import ModelCards
from gateway.model_directory import ModelDirectory
from runtime.connection import connect
from runtime.lifecycle import Service


class GatewayService(Service):
    def __init__(self, config: GatewayConfig, log: structlog.stdlib.BoundLogger | None = None) -> None:
        self.config = config
        self.log = log or structlog.get_logger().bind(service="gateway")
        self.models = ModelDirectory()
        self.metrics = GatewayMetrics()
        self._nc: NATS | None = None
        self._micro: MicroApi | None = None
        self.http: HttpServer | None = None
        self.status: StatusHub | None = None

    async def start(self) -> None:
        config = self.config
        self._nc = nc = await connect(config.nats_url, "iris-gateway")
        await self.models.start(nc)
        forwarder = Forwarder(nc, self.models, config.max_in_flight)
        self._micro = MicroApi(nc, forwarder, self.log)
        await self._micro.start()
        if config.http_port:
            ctx = HttpContext(config, KeyRing(config), self.models, forwarder, self.metrics, self.log, ModelCards(nc))
            self.status = StatusHub(self.models, self.metrics.refusals, self.log)
            await self.status.start(nc)
            app = build_app(ctx, lambda: nc.is_connected, BrokerLeader(nc).leader, self.status)
            self.http = HttpServer(app, config.http_host, config.http_port)
            await self.http.start()
        self.log.info(
            "gateway started",
            nats=config.nats_url,
            service="iris",
            http=self.http.url if self.http else None,
            keys=len(config.api_keys),
            keys_required=config.keys_required,
        )

    async def stop(self) -> None:
        if self.status is not None:
            await self.status.stop()  # ends open event streams, which the HTTP server would wait for
            self.status = None
        if self.http is not None:
            await self.http.stop()
            self.http = None
        if self._micro is not None:
            await self._micro.stop()
            self._micro = None
        await self.models.stop()
        if self._nc is not None:
            nc, self._nc = self._nc, None
            await nc.drain()
        self.log.info("gateway stopped")
