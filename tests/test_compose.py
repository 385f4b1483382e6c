"""The Docker Compose file and the Dockerfile run commands and settings that really exist."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.main import build_parser
from settings import ENV_PREFIX, Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def runs_casesync(service: dict[str, Any]) -> bool:
    """The service runs the image's entry point, ``casesync``, with its command as arguments."""
    return "build" in service and "entrypoint" not in service


def casesync_invocations() -> list[tuple[str, list[str]]]:
    """Every ``casesync ...`` the file runs: service commands and health checks."""
    found = []
    for name, service in SERVICES.items():
        if runs_casesync(service):
            found.append((f"{name} command", list(service["command"])))
        test = service.get("healthcheck", {}).get("test", [])
        if test[:2] == ["CMD", "casesync"]:
            found.append((f"{name} health check", list(test[2:])))
    return found


INVOCATIONS = casesync_invocations()


def known_commands(parser: argparse.ArgumentParser) -> list[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return sorted(action.choices)
    return []


def test_the_file_runs_casesync_commands() -> None:
    assert [where for where, _ in INVOCATIONS] == [
        "worker command",
        "worker health check",
        "simulator command",
    ]


@pytest.mark.parametrize(("where", "argv"), INVOCATIONS, ids=[where for where, _ in INVOCATIONS])
def test_every_casesync_command_of_the_compose_file_is_one_the_cli_knows(
    where: str, argv: list[str]
) -> None:
    parser = build_parser()
    known = known_commands(parser)
    assert argv, f"{where}: no command"
    assert argv[0] in known, (
        f"{where} runs `casesync {' '.join(argv)}`, but cli.main.build_parser() knows only "
        f"{', '.join(known)}"
    )
    try:
        args, extra = parser.parse_known_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `casesync {' '.join(argv)}` is refused by the CLI's parser")
    assert not extra or getattr(args, "accepts_extra", False), (
        f"{where}: `casesync {argv[0]}` does not take {' '.join(extra)}"
    )


def casesync_variables() -> list[tuple[str, str]]:
    return [
        (name, variable)
        for name, service in SERVICES.items()
        for variable in service.get("environment", {})
        if variable.startswith(ENV_PREFIX)
    ]


@pytest.mark.parametrize(("service", "variable"), casesync_variables())
def test_every_casesync_variable_of_the_compose_file_is_a_setting(
    service: str, variable: str
) -> None:
    fields = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    assert variable in fields, f"{service} sets {variable}, which no setting reads"


#: What an operator sets for the variables the file requires (``${NAME:?...}``).
REQUIRED_SAMPLES = {"REDIS_PASSWORD": "s3cret", "THALAMUS_URL": "http://simulator:8085"}


def interpolated(value: object) -> str:
    """A value as Compose passes it: ``${NAME:-default}`` as its default, ``${NAME:?...}`` as an
    operator would set it (the samples above), with no variable of this machine."""

    def one(match: re.Match[str]) -> str:
        name, kind, rest = match.group(1), match.group(2), match.group(3)
        if kind == ":-":
            return rest
        assert name in REQUIRED_SAMPLES, f"the file requires {name}; add a sample value here"
        return REQUIRED_SAMPLES[name]

    return re.sub(r"\$\{(\w+)(:-|:\?)([^}]*)\}", one, str(value))


@pytest.mark.parametrize("service", ["worker", "flower"])
def test_the_settings_a_service_gets_are_valid(
    service: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Settings refused at start-up (e.g. a lease not past the Redis time-out) stop the service.
    monkeypatch.chdir(tmp_path)  # no .env of the machine running the tests
    for name in [name for name in os.environ if name.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    for variable, value in SERVICES[service].get("environment", {}).items():
        if variable.startswith(ENV_PREFIX):
            monkeypatch.setenv(variable, interpolated(value))
    try:
        settings = load_settings()
    except SettingsError as exc:
        pytest.fail(f"{service}: {exc}")
    assert settings.redis_url == "redis://:s3cret@redis:6379/0"


def test_workers_and_flower_use_the_same_redis() -> None:
    worker = SERVICES["worker"]["environment"]["CASESYNC_REDIS_URL"]
    assert SERVICES["flower"]["environment"]["CASESYNC_REDIS_URL"] == worker
    assert worker.startswith("redis://:${REDIS_PASSWORD")
    assert worker.endswith("@redis:6379/0")


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_service_has_a_health_check(service: str) -> None:
    assert SERVICES[service].get("healthcheck", {}).get("test"), f"{service} has no health check"


def test_the_worker_health_check_is_casesync_status() -> None:
    assert SERVICES["worker"]["healthcheck"]["test"] == ["CMD", "casesync", "status"]


def test_workers_can_be_scaled() -> None:
    worker = SERVICES["worker"]
    assert worker["command"] == ["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker


def test_redis_keeps_an_append_only_file_and_needs_a_password() -> None:
    redis = SERVICES["redis"]
    command = [str(part) for part in redis["command"]]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--requirepass") + 1].startswith("${REDIS_PASSWORD")
    assert "ports" not in redis
    health = " ".join(redis["healthcheck"]["test"])
    assert "redis-cli -a" in health
    assert "ping" in health


def test_flower_asks_for_a_password() -> None:
    flower = SERVICES["flower"]
    assert flower["entrypoint"] == ["celery"]
    command = list(flower["command"])
    assert command[:3] == ["-A", "tasks", "flower"]
    assert "--port=5555" in command
    auth = [part for part in command if part.startswith("--basic-auth=")]
    assert auth == [
        "--basic-auth=${FLOWER_USER:?set FLOWER_USER}:${FLOWER_PASSWORD:?set FLOWER_PASSWORD}"
    ]


def test_the_simulator_runs_only_in_the_dev_profile() -> None:
    simulator = SERVICES["simulator"]
    assert simulator["profiles"] == ["dev"]
    assert simulator["command"] == ["simulator", "--host", "0.0.0.0", "--port", "8085"]
    assert "/api/isAlive" in " ".join(simulator["healthcheck"]["test"])


MONITORING = ("prometheus", "grafana")


def test_only_the_simulator_and_the_monitoring_services_are_optional() -> None:
    profiles = {name: service.get("profiles") for name, service in SERVICES.items()}
    assert profiles.pop("simulator") == ["dev"]
    assert {name: profiles.pop(name) for name in MONITORING} == {
        name: ["monitoring"] for name in MONITORING
    }
    assert set(profiles.values()) == {None}, "redis, worker and flower always run"


@pytest.mark.parametrize("service", MONITORING)
def test_the_monitoring_images_are_pinned_by_tag(service: str) -> None:
    image = SERVICES[service]["image"]
    assert "build" not in SERVICES[service]
    name, _, tag = image.rpartition(":")
    assert name
    assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{service}: {image} is not a pinned version"


@pytest.mark.parametrize("service", MONITORING)
def test_the_monitoring_profile_requires_no_variable(service: str) -> None:
    # Compose interpolates every service, active profile or not: a ${NAME:?} here would stop
    # `docker compose up` for everyone who does not monitor.
    assert ":?" not in yaml.safe_dump(SERVICES[service])


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_no_port_is_published_beyond_this_machine(service: str) -> None:
    for port in SERVICES[service].get("ports", []):
        assert str(port).startswith("127.0.0.1:"), f"{service} publishes {port} to every host"


def bind_mounts(service: str) -> dict[str, tuple[Path, str]]:
    """The files of this checkout a service mounts: by path in the container, the file and the
    mode (``ro``, or empty)."""
    mounts = [[*str(volume).split(":"), ""] for volume in SERVICES[service].get("volumes", [])]
    return {
        target: (ROOT / source, mode)
        for source, target, mode, *_ in mounts
        if source.startswith("./")
    }


@pytest.mark.parametrize("service", MONITORING)
def test_the_files_the_monitoring_services_mount_exist(service: str) -> None:
    mounts = bind_mounts(service)
    assert mounts
    for target, (source, mode) in mounts.items():
        assert source.exists(), f"{service} mounts {source.relative_to(ROOT)}, which is missing"
        assert source.resolve().is_relative_to(ROOT / "deploy"), f"{service}: {source}"
        assert mode == "ro", f"{service} may write to {source.relative_to(ROOT)} at {target}"


def test_prometheus_scrapes_every_worker_on_its_metrics_port() -> None:
    worker = SERVICES["worker"]
    port = worker["environment"]["CASESYNC_METRICS_PORT"]
    assert worker["expose"] == [port]
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text(encoding="utf-8"))
    [job] = config["scrape_configs"]
    [look_up] = job["dns_sd_configs"]
    assert (look_up["names"], look_up["type"], look_up["port"]) == (["worker"], "A", int(port))
    mounted = bind_mounts("prometheus")
    for rules in config["rule_files"]:
        assert f"/etc/prometheus/{rules}" in mounted, f"prometheus.yml loads {rules}, not mounted"


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard() -> None:
    mounted = {target: source for target, (source, _) in bind_mounts("grafana").items()}
    provisioning = "/etc/grafana/provisioning"
    datasources = mounted[f"{provisioning}/datasources"] / "prometheus.yml"
    sources = yaml.safe_load(datasources.read_text(encoding="utf-8"))
    assert [source["url"] for source in sources["datasources"]] == ["http://prometheus:9090"]
    dashboards = mounted[f"{provisioning}/dashboards"] / "casesync.yml"
    providers = yaml.safe_load(dashboards.read_text(encoding="utf-8"))
    [folder] = [provider["options"]["path"] for provider in providers["providers"]]
    assert mounted[f"{folder}/casesync.json"] == ROOT / "deploy/grafana/casesync.json"


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    logical = re.sub(r"\\\n", " ", text)
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
        for line in logical.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_the_image_runs_as_a_user_that_is_not_root() -> None:
    users = [value for instruction, value in dockerfile_instructions() if instruction == "USER"]
    assert users, "the Dockerfile has no USER"
    user = users[-1].split(":", 1)[0]
    assert user not in ("root", "0")


def test_the_image_installs_dependencies_before_copying_the_source() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    copies = [value for instruction, value in instructions if instruction == "COPY"]
    assert copies[0] == "pyproject.toml ./"
    first_run = next(i for i, (instruction, _) in enumerate(instructions) if instruction == "RUN")
    source_copy = instructions.index(("COPY", ". ."))
    assert first_run < source_copy
    assert "pip install" in instructions[first_run][1]
    assert ("ENTRYPOINT", '["casesync"]') in instructions
    assert instructions[-1] == ("CMD", '["worker"]')


def test_a_local_env_file_never_goes_into_the_image() -> None:
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert ".env" in ignored
    assert ".venv" in ignored
