"""The Grafana dashboard and Prometheus config in deploy/ only name metrics the services really export."""

from __future__ import annotations

import json
import re
from pathlib import Path

from broker.metrics import BrokerMetrics
from gateway.metrics import GatewayMetrics
from gpu_worker.metrics import WorkerMetrics
from iris.launcher import UpConfig

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def exported_names() -> set[str]:
    names = set()
    for metrics in (BrokerMetrics(), WorkerMetrics(), GatewayMetrics()):
        for family in metrics.registry.collect():
            kind = family.type
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(kind, [""])
            names.update(family.name + suffix for suffix in suffixes)
    return names


def test_dashboard_queries_use_exported_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "iris.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"iris_[a-z_]+", expr)}
    assert len(used) >= 15
    assert used <= exported_names(), f"not exported: {sorted(used - exported_names())}"


def test_scrape_config_matches_iris_up_ports() -> None:
    text = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    up = UpConfig()
    for port in (up.http_port, up.metrics_port, up.metrics_port + 1):
        assert f"127.0.0.1:{port}" in text
