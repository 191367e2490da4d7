"""Each config field is declared once: the command-line options of `python -m broker|gpu_worker|gateway`
and `iris up` are generated from the config Structs (type, bounds, default and help text), and every flag
users already type keeps its spelling."""

from __future__ import annotations

from pathlib import Path

import click
import msgspec
import pytest
from click.testing import CliRunner

from broker.__main__ import main as broker_main
from broker.config import BrokerConfig
from gateway.__main__ import main as gateway_main
from gateway.config import GatewayConfig
from gpu_worker.__main__ import main as worker_main
from gpu_worker.config import WorkerConfig
from iris.cli import main as iris_main
from iris.launch.processes import Service
from iris.launch.up_config import PARTS, UP_SETTINGS, UpConfig, load_up
from runtime.config_loading import ConfigError, ConfigSource, decode_handoff, load_config, service_options, settings

SERVICES = [(broker_main, BrokerConfig), (worker_main, WorkerConfig), (gateway_main, GatewayConfig)]
FLAGS_BEFORE = {  # every flag these commands had when each was declared by hand
    "broker": "--nats --config --policy --max-concurrency --worker-timeout --max-queue --max-inflight --max-attempts "
    "--replicas --broker-id --leader-ttl --metrics-host --metrics-port --limit-by --limit-per-value --min-share "
    "--priority-mode --log-level",
    "worker": "--nats --config --engine --model --model-name --worker-id --slots --ctx-per-slot --n-gpu-layers "
    "--main-gpu --tensor-split --flash-attn --kv-unified --kv-per-slot --threads --fake-tps --fake-crash-on "
    "--upstream --upstream-api --upstream-model --heartbeat --metrics-host --metrics-port --log-level",
    "gateway": "--nats --config --http-host --http-port --require-key --no-require-key --api-key --max-in-flight "
    "--log-level",
    "up": "--config --engine --model --model-name --workers --slots --max-concurrency --policy --n-gpu-layers "
    "--fake-tps --nats-port --cluster --http-host --http-port --metrics-port --require-key --api-key --state-dir",
}


def _options(command: click.Command) -> dict[str, click.Option]:
    return {p.name: p for p in command.params if isinstance(p, click.Option) and p.name}


def _spellings(command: click.Command) -> set[str]:
    return {flag for p in command.params for flag in [*p.opts, *p.secondary_opts]}


@pytest.mark.parametrize(("command", "config_type"), SERVICES)
def test_every_field_has_an_option_with_its_help(command: click.Command, config_type: type) -> None:
    options = _options(command)
    for setting in settings(config_type):
        assert setting.help, f"{config_type.__name__}.{setting.name} has no Meta(description=...)"
        assert setting.name in options, f"{config_type.__name__}.{setting.name} has no option"
        assert options[setting.name].help == setting.help


def test_iris_up_options_come_from_the_up_and_service_structs() -> None:
    options = _options(iris_main.commands["up"])
    for setting in settings(UpConfig):
        assert setting.help and options[setting.name].help == setting.help
    for part, names in UP_SETTINGS.items():
        by_name = {s.name: s for s in settings(PARTS[part])}
        for name in names:
            assert options[name].help == by_name[name].help


@pytest.mark.parametrize(
    ("command", "part"),
    [(broker_main, "broker"), (worker_main, "worker"), (gateway_main, "gateway"), (iris_main.commands["up"], "up")],
)
def test_every_flag_keeps_its_spelling(command: click.Command, part: str) -> None:
    assert set(FLAGS_BEFORE[part].split()) <= _spellings(command)


def test_options_carry_the_struct_bounds_and_choices() -> None:
    options = _options(worker_main)
    assert isinstance(options["slots"].type, click.IntRange)
    assert (options["slots"].type.min, options["slots"].type.max) == (1, 256)
    assert isinstance(options["engine"].type, click.Choice)
    assert set(options["engine"].type.choices) == {"llama", "fake", "http"}
    refused = CliRunner().invoke(worker_main, ["--slots", "0"])
    assert refused.exit_code == 2 and "Invalid value for '--slots': 0 is not in the range 1<=x<=256" in refused.output


def test_whole_float_bounds_read_as_written_whatever_was_imported_first() -> None:
    """`GenerateRequest.min_p` (imported first) declares `Meta(ge=0.0, le=1.0)`; `--min-share`'s equal
    `Meta(ge=0, le=1)` is the same cached alias, yet its help keeps `0<=x<=1`."""
    import schemas.messages  # noqa: F401  (the float-spelled alias exists before the broker's)

    assert isinstance(_options(broker_main)["min_share"].type, click.FloatRange)
    shown = "".join(CliRunner().invoke(broker_main, ["--help"]).output.split())
    assert "--min-shareFLOATRANGE" in shown and "[default:0.0;0<=x<=1]" in shown


def test_a_table_is_given_as_json_and_validated_naming_the_key(tmp_path: Path) -> None:
    env = {"IRIS_BROKER_WORKLOAD_WEIGHTS": '{"paid": 5}'}
    assert load_config(BrokerConfig, "broker", env=env).workload_weights == {"paid": 5.0}
    with pytest.raises(ConfigError, match=r"> 0.0 - at `\$.workload_weights"):
        load_config(BrokerConfig, "broker", env={}, flags={"workload_weights": {"paid": 0}})
    with pytest.raises(ConfigError, match="IRIS_BROKER_WORKLOAD_WEIGHTS"):
        load_config(BrokerConfig, "broker", env={"IRIS_BROKER_WORKLOAD_WEIGHTS": "paid=5"})


def test_the_handoff_sits_between_the_environment_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "iris.toml"
    path.write_text("[worker]\nslots = 2\nthreads = 2\nctx_per_slot = 512\n")
    env = {"IRIS_WORKER_SLOTS": "3", "IRIS_WORKER_THREADS": "3"}
    handoff = decode_handoff('{"slots": 4, "worker_id": "up-0"}')
    config = load_config(WorkerConfig, "worker", path=path, env=env, handoff=handoff, flags={"threads": 5})
    assert (config.ctx_per_slot, config.slots, config.threads, config.worker_id) == (512, 4, 5, "up-0")
    with pytest.raises(ConfigError, match="--config-json"):
        decode_handoff("[1, 2]")
    with pytest.raises(ConfigError, match="unknown field `nope`"):
        load_config(WorkerConfig, "worker", env={}, handoff={"nope": 1})


def test_up_settings_reach_their_service_and_up_keys_stay_valid(tmp_path: Path) -> None:
    path = tmp_path / "iris.toml"
    path.write_text(
        "[up]\nslots = 3\nworkers = 2\n[worker]\nslots = 2\nctx_per_slot = 512\n[broker]\npolicy = 'fifo'\n"
    )
    plan = load_up(path, {"max_concurrency": 2, "http_port": 0}, env={})
    assert plan.up.workers == 2
    assert (plan.worker.slots, plan.worker.ctx_per_slot) == (3, 512)  # [up] beats [worker], as its flags do
    assert (plan.broker.policy, plan.broker.max_concurrency, plan.gateway.http_port) == ("fifo", 2, 0)
    assert plan.handoff["worker"] == {"slots": 3}


@pytest.mark.parametrize(
    ("toml", "flags", "named"),
    [
        ("[up]\nslot = 3\n", {}, "slot"),
        ("[up]\nslots = 0\n", {}, r"invalid \[up\] config: .*>= 1.*\$.slots"),
        ("[broker]\nmax_concurency = 2\n", {}, "max_concurency"),
        ("", {"api_key": ["short"]}, "at least 8 characters"),
    ],
)
def test_iris_up_refuses_a_bad_config_naming_the_key(
    tmp_path: Path, toml: str, flags: dict[str, object], named: str
) -> None:
    path = tmp_path / "iris.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=named):
        load_up(path, flags, env={})


@click.command()
@service_options(WorkerConfig, "worker", "gpu_worker")
def show_worker(source: ConfigSource[WorkerConfig]) -> None:
    click.echo(msgspec.json.encode(source.load()))


def test_a_child_loads_what_it_was_handed_under_its_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IRIS_WORKER_THREADS", "3")  # an untyped flag's default never hides a variable
    monkeypatch.setenv("IRIS_WORKER_SLOTS", "3")
    command = Service("gpu_worker", {"slots": 4, "worker_id": "up-0"}, ["--ctx-per-slot", "512"]).command()
    assert command[1:3] == ["-m", "gpu_worker"]
    shown = CliRunner().invoke(show_worker, command[3:])
    config = msgspec.json.decode(shown.output)
    assert [config[k] for k in ("threads", "slots", "worker_id", "ctx_per_slot")] == [3, 4, "up-0", 512]


def test_a_bad_handoff_stops_the_service_naming_the_key() -> None:
    refused = CliRunner().invoke(broker_main, ["--config-json", '{"max_queue": -1}'])
    assert refused.exit_code == 1 and "broker: invalid [broker] config" in refused.output
    assert "$.max_queue" in refused.output


def test_iris_up_stops_before_starting_anything_on_a_bad_table(tmp_path: Path) -> None:
    path = tmp_path / "iris.toml"
    path.write_text("[gateway]\nhttp_prot = 8080\n")
    refused = CliRunner().invoke(iris_main, ["up", "--config", str(path), "--state-dir", str(tmp_path / "state")])
    assert refused.exit_code == 2 and "unknown field `http_prot`" in refused.output
    assert not (tmp_path / "state").exists()
