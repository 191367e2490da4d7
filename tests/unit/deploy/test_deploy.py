"""deploy/ holds what it claims: the dashboard and scrape config name real metrics, the Kubernetes config
map is a valid Iris config, and the NATS configs pass the pinned nats-server's own check."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

from broker.config import BrokerConfig
from broker.metrics import BrokerMetrics
from gateway.config import GatewayConfig
from gateway.metrics import GatewayMetrics
from gpu_worker.config import WorkerConfig
from gpu_worker.metrics import WorkerMetrics
from iris.launch.nats_server import nats_server_binary
from iris.launch.up_config import UpConfig
from runtime.config_loading import load_config

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"


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
    for port in (GatewayConfig().http_port, up.metrics_port, up.metrics_port + 1):
        assert f"127.0.0.1:{port}" in text


def test_kubernetes_config_map_is_a_valid_iris_config(tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "iris.yaml").read_text()))
    toml = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["iris.toml"]
    path = tmp_path / "iris.toml"
    path.write_text(toml)
    assert load_config(BrokerConfig, "broker", path=path, env={}).replicas == 3
    assert load_config(WorkerConfig, "worker", path=path, env={}).n_gpu_layers == -1
    assert load_config(GatewayConfig, "gateway", path=path, env={}).http_host == "0.0.0.0"
    yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_nats_configs_are_valid_for_the_pinned_server() -> None:
    env = {
        **os.environ,
        **{f"IRIS_NATS_{u}_PASSWORD": "x" for u in ("BROKER", "WORKER", "GATEWAY", "ALICE", "BOB", "SYS")},
    }
    for conf in (
        "nats-server.conf",
        "nats-auth.conf",
        "cluster/nats-1.conf",
        "cluster/nats-2.conf",
        "cluster/nats-3.conf",
    ):
        check = subprocess.run([nats_server_binary(), "-t", "-c", str(DEPLOY / conf)], capture_output=True, env=env)
        assert check.returncode == 0, f"{conf}: {check.stderr.decode()}{check.stdout.decode()}"


def kubernetes_docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "iris.yaml").read_text()) if d]


def test_kubernetes_manifests_pass_the_kubernetes_schemas() -> None:
    for doc in kubernetes_docs():  # strict: a misspelt or misplaced field fails too
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_kubernetes_containers_have_probes_and_requests_and_brokers_a_budget() -> None:
    docs = kubernetes_docs()
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == {"iris-broker", "iris-worker", "iris-gateway"}
    for name, deployment in deployments.items():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            assert {"readinessProbe", "livenessProbe"} <= set(container), name
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
    budget = next(d for d in docs if d["kind"] == "PodDisruptionBudget")
    broker_labels = deployments["iris-broker"]["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= broker_labels.items()
    assert budget["spec"]["minAvailable"] < deployments["iris-broker"]["spec"]["replicas"]


def test_compose_health_checks_probe_each_services_own_endpoint() -> None:
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    probes = {name: endpoint(s["healthcheck"]["test"]) for name, s in services.items() if "healthcheck" in s}
    assert "/readyz" in probes["gateway"]
    assert all(":9101/metrics" in probes[b] for b in ("broker-a", "broker-b"))
    assert all(":9102/metrics" in probes[w] for w in ("worker-1", "worker-2"))
    assert all("8222/healthz" in probes[n] for n in ("nats-1", "nats-2", "nats-3"))
    for name in probes:
        assert services[name]["restart"] == "always", name


def endpoint(probe: list[str]) -> str:
    """`:<port><path>` a compose health probe (bash's /dev/tcp, see compose.yaml) asks for."""
    found = re.search(r"/dev/tcp/127\.0\.0\.1/(\d+) .*GET (\S+) ", probe[-1])
    assert found is not None, probe
    return f":{found[1]}{found[2]}"
