"""Config loading: TOML, then IRIS_<SERVICE>_* environment, then flags; bad keys are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config import BrokerConfig
from gpu_worker.config import WorkerConfig
from runtime.config_loading import ConfigError, load_config


def test_sources_are_layered(tmp_path: Path) -> None:
    path = tmp_path / "iris.toml"
    path.write_text("[broker]\nmax_concurrency = 2\nworker_timeout_s = 5.0\n[worker]\nslots = 3\n")
    env = {"IRIS_BROKER_WORKER_TIMEOUT_S": "7"}
    config = load_config(BrokerConfig, "broker", path=path, env=env, flags={"max_concurrency": 4, "policy": None})
    assert (config.max_concurrency, config.worker_timeout_s) == (4, 7.0)
    assert load_config(WorkerConfig, "worker", path=path, env={}).slots == 3


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ("[broker]\nmax_concurency = 2\n", "max_concurency"),
        ("[broker]\nmax_concurrency = -1\n", "$.max_concurrency"),
        ("[broker]\npolicy = 'random'\n", "$.policy"),
        ("[broker]\nmax_concurrency = \n", "cannot read config file"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, toml: str, named: str) -> None:
    path = tmp_path / "iris.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(BrokerConfig, "broker", path=path, env={})
    assert named in str(info.value)


def test_bad_environment_value_is_named() -> None:
    with pytest.raises(ConfigError, match=r"\$.slots"):
        load_config(WorkerConfig, "worker", env={"IRIS_WORKER_SLOTS": "many"})
    with pytest.raises(ConfigError, match=r"\$.worker_id"):
        load_config(WorkerConfig, "worker", env={"IRIS_WORKER_WORKER_ID": "has.dot"})
