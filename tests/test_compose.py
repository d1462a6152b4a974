"""docker-compose.yml cannot run here (no Docker engine): parse it and check what would break a user's `up`."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT_ROOT

COMPOSE = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
ONE_SHOT = {"kafka-topics", "trainer", "producer"}
CONDITIONS = {"service_healthy", "service_completed_successfully", "service_started"}


def test_services_of_the_stack_are_all_there():
    assert set(SERVICES) >= {"kafka", "kafka-topics", "redis", "prometheus", "grafana", "trainer", "worker",
                             "producer"}
    assert SERVICES["producer"]["profiles"] == ["demo"], "the demo producer is optional"


def test_images_are_pinned():
    for name, service in SERVICES.items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest" and re.search(r"\d", tag), f"{name}: pin {image}"
        if "build" in service:
            assert (PROJECT_ROOT / service["build"]["context"] / "Dockerfile").exists()


def test_long_running_services_have_health_checks_and_ports():
    ports = {name: {str(p).split(":")[0] for p in service.get("ports", [])} for name, service in SERVICES.items()}
    assert ports["kafka"] == {"9092"} and ports["redis"] == {"6379"} and ports["prometheus"] == {"9090"}
    assert ports["grafana"] == {"3000"} and ports["worker"] == {"8000"}
    for name, service in SERVICES.items():
        if name not in ONE_SHOT:
            test = service["healthcheck"]["test"]
            assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name


def test_depends_on_use_conditions_on_existing_services():
    for name, service in SERVICES.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
            assert spec["condition"] in CONDITIONS, f"{name} -> {dependency}: {spec}"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES[dependency], f"{dependency} has no health check to wait for"
            if spec["condition"] == "service_completed_successfully":
                assert dependency in ONE_SHOT
    worker = SERVICES["worker"]["depends_on"]
    assert worker["trainer"]["condition"] == "service_completed_successfully"
    assert worker["kafka-topics"]["condition"] == "service_completed_successfully"


def test_every_mounted_file_exists():
    named = set(COMPOSE.get("volumes") or {})
    mounts = 0
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source in named:
                continue
            mounts += 1
            assert (PROJECT_ROOT / source).exists(), f"{name} mounts missing {source}"
    assert mounts >= 3
    prometheus = SERVICES["prometheus"]
    config = next(arg.split("=", 1)[1] for arg in prometheus["command"] if arg.startswith("--config.file="))
    mount = next(v for v in prometheus["volumes"] if config.startswith(v.split(":")[1]))
    local = PROJECT_ROOT / mount.split(":")[0] / Path(config).relative_to(mount.split(":")[1])
    assert local.exists(), f"Prometheus config {config} is not in the mounted folder"
    targets = {t for job in yaml.safe_load(local.read_text())["scrape_configs"]
               for c in job.get("static_configs", []) for t in c["targets"]}
    assert "worker:8000" in targets


def test_topics_created_are_the_spec_topics():
    script = " ".join(SERVICES["kafka-topics"]["command"])
    assert all(t in script for t in ("transactions ", "flagged-transactions", "transaction-scores",
                                     "transactions-dlq")) and "--partitions 6" in script


def fraudmon_argv(service: str) -> list[str]:
    """The `fraudmon ...` arguments a project-image service runs: its command under the image's `fraudmon`
    entrypoint, or the `fraudmon` call inside a `/bin/sh -c` script."""
    spec = SERVICES[service]
    entrypoint, command = spec.get("entrypoint"), spec["command"]
    if entrypoint is None:
        return list(command)
    assert entrypoint == ["/bin/sh", "-c"], f"{service}: unexpected entrypoint {entrypoint}"
    words = shlex.split(command[0])
    start = words.index("fraudmon") + 1
    end = next((i for i, w in enumerate(words[start:], start) if w in ("||", "&&", ";", "|")), len(words))
    return words[start:end]


@pytest.mark.parametrize("service", ["trainer", "worker", "producer"])
def test_commands_parse_with_the_real_cli(service):
    """Each service's `fraudmon` command line parses with the CLI's own parser: a renamed option, a misspelt
    one or a value of the wrong type fails here instead of in a user's `docker compose up`."""
    import typer

    from fraudmon.cli import app

    group = typer.main.get_command(app)
    parent = group.context_class(group, info_name="fraudmon")
    name, command, rest = group.resolve_command(parent, fraudmon_argv(service))
    assert name == {"trainer": "train", "worker": "worker", "producer": "produce"}[service]
    command.make_context(name, rest, parent=parent)  # raises NoSuchOption / BadParameter


def test_the_worker_serves_the_model_the_trainer_writes():
    argv = fraudmon_argv("trainer")
    out_dir = argv[argv.index("--out-dir") + 1]
    name = argv[argv.index("--name") + 1] if "--name" in argv else "default"
    for service in ("worker", "trainer"):
        assert SERVICES[service]["environment"]["FRAUDMON_MODEL"] == f"{out_dir}/{name}.onnx"
    trainer_script = SERVICES["trainer"]["command"][0]
    assert f"test -f {out_dir}/{name}.onnx ||" in trainer_script, "a later `up` must not retrain"
    assert any(v.split(":")[1] == out_dir for v in SERVICES["worker"]["volumes"]), "the worker mounts the models"


def test_kafka_keeps_its_log_in_the_volume():
    kafka = SERVICES["kafka"]
    mounts = {v.split(":")[1] for v in kafka["volumes"]}
    assert kafka["environment"]["KAFKA_LOG_DIRS"] in mounts


def test_dockerfile_builds_a_worker_without_tensorflow_and_a_trainer():
    """python:3.13-slim; a `worker` target with the base dependencies and a `trainer` target that adds the `train`
    extra; every path it copies present in the repo; compose builds each target for its services."""
    lines = [line.strip() for line in (PROJECT_ROOT / "Dockerfile").read_text().splitlines()]
    stages = {line.split()[-1]: line.split()[1] for line in lines if line.startswith("FROM ")}
    assert re.fullmatch(r"python:3\.13(\.\d+)?-slim(-\w+)?", stages["base"]), stages
    assert stages["worker"] == "base" and stages["trainer"] == "base"
    copied = [word for line in lines if line.startswith("COPY ") and "--from" not in line
              for word in line.split()[1:-1]]
    assert {"pyproject.toml", "fraudmon", "stream_app", "training", "config", "models"} <= set(copied)
    for source in copied:
        assert (PROJECT_ROOT / source).exists(), f"Dockerfile copies missing {source}"
    text = "\n".join(lines)
    assert "['optional-dependencies']['train']" in text.split("AS trainer")[1].split("AS worker")[0]
    assert "optional-dependencies" not in text.split("AS worker")[1], "the worker image has no TensorFlow"
    assert 'ENTRYPOINT ["fraudmon"]' in lines
    train_extra = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.startswith("tensorflow") for d in train_extra["train"])
    base = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not any(d.startswith(("tensorflow", "tf2onnx")) for d in base)
    assert SERVICES["trainer"]["build"]["target"] == "trainer"
    assert SERVICES["worker"]["build"]["target"] == SERVICES["producer"]["build"]["target"] == "worker"
    ignored = (PROJECT_ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", ".stack", ".cache"} <= set(ignored), "keep the build context small"


def test_worker_environment_points_at_the_compose_services():
    env = SERVICES["worker"]["environment"]
    assert env["FRAUDMON_KAFKA_BOOTSTRAP"] == "kafka:19092" and env["FRAUDMON_REDIS_URL"].startswith("redis://redis")
    advertised = SERVICES["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert "kafka:19092" in advertised and "localhost:9092" in advertised


def test_redis_persists_rule_state_in_a_volume():
    """Append-only file fsynced every second, in the directory a named volume is mounted on: rule state
    (velocity windows, account histories, seen transaction ids) survives `docker compose restart redis`."""
    redis = SERVICES["redis"]
    command = redis["command"]
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert command[0] == "redis-server"
    assert options["--appendonly"] == "yes" and options["--appendfsync"] == "everysec"
    volumes = {v.split(":")[1]: v.split(":")[0] for v in redis["volumes"]}
    assert volumes.get(options["--dir"]) in COMPOSE["volumes"], "Redis's --dir must be a named volume"
