"""casesync's configuration as an operator meets it: variables, ``.env``, secrets, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cli.main import main
from cli.worker_cmd import celery_worker_argv
from settings import ENV_PREFIX, Settings, SettingsError, load_settings

TOKEN = "tok-5a4b3c2d1e"
PASSWORD = "pw-hunter2-77"
REDIS_PASSWORD = "redis-pw-31337"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No CASESYNC_* variable of the machine running the tests, and no .env but the test's."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults_are_those_of_the_contract() -> None:
    settings = load_settings()
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.thalamus_url is None
    assert settings.thalamus_touchpoint is None
    assert settings.thalamus_token is None
    assert settings.thalamus_principal is None
    assert settings.thalamus_password is None
    assert settings.events_stream == "casesync:events"
    assert settings.results_stream == "casesync:results"
    assert settings.dead_letter_stream == "casesync:dead-letter"


def test_variables_are_read_with_the_casesync_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASESYNC_THALAMUS_URL", "https://thalamus.example.com/thalamus")
    monkeypatch.setenv("CASESYNC_CONCURRENCY", "8")
    monkeypatch.setenv("CASESYNC_POOL", "prefork")
    settings = load_settings()
    assert str(settings.thalamus_url) == "https://thalamus.example.com/thalamus"
    assert settings.concurrency == 8
    assert settings.pool == "prefork"


def test_a_dotenv_file_supplies_settings(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "CASESYNC_EVENTS_STREAM=billing:events\nCASESYNC_THALAMUS_TOKEN=from-dotenv\n",
        encoding="utf-8",
    )
    settings = load_settings()
    assert settings.events_stream == "billing:events"
    assert settings.thalamus_token is not None
    assert settings.thalamus_token.get_secret_value() == "from-dotenv"


def test_a_variable_wins_over_the_dotenv_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("CASESYNC_CONCURRENCY=4\n", encoding="utf-8")
    monkeypatch.setenv("CASESYNC_CONCURRENCY", "16")
    assert load_settings().concurrency == 16


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CASESYNC_CONCURRENCY", "lots"),
        ("CASESYNC_CONCURRENCY", "0"),
        ("CASESYNC_THALAMUS_URL", "not a url"),
        ("CASESYNC_POOL", "gevent"),
        ("CASESYNC_LOG_JSON", "maybe"),
        ("CASESYNC_READ_TIMEOUT", "-1"),
        ("CASESYNC_METRICS_PORT", "70000"),
        ("CASESYNC_BATCHES", "0"),
        ("CASESYNC_BATCHES", "65"),
        ("CASESYNC_TASK_EVENTS", "maybe"),
        ("CASESYNC_INTAKE_BACKLOG", "-1"),
        ("CASESYNC_REPLYTO_PATTERN", "billing:(results"),
        ("CASESYNC_MAX_CLOCK_SKEW", "-5"),
    ],
)
def test_a_bad_value_stops_start_up_with_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert variable in message
    assert "\n" not in message


def test_a_bad_value_makes_the_command_say_so_on_stderr_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CASESYNC_CONCURRENCY", "lots")
    assert main(["config"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("casesync: invalid setting CASESYNC_CONCURRENCY")
    assert err.count("\n") == 1


@pytest.mark.parametrize(("visibility", "redis_timeout"), [("10", "10"), ("5", "10"), ("60", "61")])
def test_a_lease_not_past_the_redis_time_out_is_refused(
    monkeypatch: pytest.MonkeyPatch, visibility: str, redis_timeout: str
) -> None:
    # A renewal that waits out one slow Redis call must land before the lease runs out.
    monkeypatch.setenv("CASESYNC_VISIBILITY_TIMEOUT", visibility)
    monkeypatch.setenv("CASESYNC_REDIS_TIMEOUT", redis_timeout)
    with pytest.raises(SettingsError, match="CASESYNC_VISIBILITY_TIMEOUT") as caught:
        load_settings()
    message = str(caught.value)
    assert "CASESYNC_REDIS_TIMEOUT" in message
    assert f"({visibility})" in message
    assert f"({redis_timeout})" in message
    assert "\n" not in message


def test_a_replica_wait_not_shorter_than_a_redis_call_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # WAIT blocks its connection: a longer wait would read as Redis not answering.
    monkeypatch.setenv("CASESYNC_REDIS_TIMEOUT", "2")
    monkeypatch.setenv("CASESYNC_REDIS_WAIT_TIMEOUT", "2")
    with pytest.raises(SettingsError, match="CASESYNC_REDIS_WAIT_TIMEOUT"):
        load_settings()


def test_the_default_lease_outlasts_the_default_redis_time_out() -> None:
    settings = load_settings()
    assert settings.visibility_timeout == 60
    assert settings.visibility_timeout > settings.redis_timeout


def test_a_lease_past_the_redis_time_out_is_accepted_however_long_the_retry_delays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Retries wait on the schedule now, not in a leased task: the lease need not outlast them.
    monkeypatch.setenv("CASESYNC_VISIBILITY_TIMEOUT", "11")
    monkeypatch.setenv("CASESYNC_REDIS_TIMEOUT", "10")
    monkeypatch.setenv("CASESYNC_RETRY_MAX_DELAY", "3600")
    settings = load_settings()
    assert settings.visibility_timeout == 11
    assert settings.retry_max_delay == 3600


def test_a_worker_runs_casesync_batches_batches_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASESYNC_THALAMUS_URL", "http://thalamus.test")
    assert load_settings().batches == 4
    monkeypatch.setenv("CASESYNC_BATCHES", "6")
    argv = celery_worker_argv(load_settings(), [])
    assert argv[argv.index("--concurrency") + 1] == "6"
    given = celery_worker_argv(load_settings(), ["--concurrency=2"])
    assert "--concurrency" not in given, "a concurrency given on the command line wins"
    assert given[-1] == "--concurrency=2"


@pytest.mark.parametrize(("batches", "backlog", "effective"), [("6", None, 6), ("6", "10", 10)])
def test_intake_stops_at_as_many_queued_batches_as_a_worker_runs_unless_told(
    monkeypatch: pytest.MonkeyPatch, batches: str, backlog: str | None, effective: int
) -> None:
    monkeypatch.setenv("CASESYNC_BATCHES", batches)
    if backlog is not None:
        monkeypatch.setenv("CASESYNC_INTAKE_BACKLOG", backlog)
    assert load_settings().effective_backlog == effective


@pytest.mark.parametrize(("value", "expected"), [(None, False), ("true", True), ("0", False)])
def test_task_events_are_off_unless_turned_on(
    monkeypatch: pytest.MonkeyPatch, value: str | None, expected: bool
) -> None:
    if value is not None:
        monkeypatch.setenv("CASESYNC_TASK_EVENTS", value)
    assert load_settings().task_events is expected


def test_a_blank_thalamus_url_or_secrets_dir_means_none(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Compose files write CASESYNC_X=${X:-}; blank must not mean "the current folder".
    (tmp_path / "thalamus_token").write_text("from-the-working-folder", encoding="utf-8")
    monkeypatch.setenv("CASESYNC_THALAMUS_URL", "")
    monkeypatch.setenv("CASESYNC_SECRETS_DIR", "")
    settings = load_settings()
    assert settings.thalamus_url is None
    assert settings.secrets_dir is None
    assert settings.thalamus_token is None


def test_a_blank_token_leaves_the_secret_file_in_charge(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "thalamus_token").write_text("from-file", encoding="utf-8")
    monkeypatch.setenv("CASESYNC_SECRETS_DIR", str(tmp_path))
    for name in ("TOUCHPOINT", "TOKEN", "PRINCIPAL", "PASSWORD"):
        monkeypatch.setenv(f"CASESYNC_THALAMUS_{name}", "")
    settings = load_settings()
    assert settings.thalamus_token is not None
    assert settings.thalamus_token.get_secret_value() == "from-file"
    assert settings.thalamus_touchpoint is None
    assert settings.thalamus_principal is None
    assert settings.thalamus_password is None


# --- secrets -----------------------------------------------------------------------------------


def secret_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASESYNC_THALAMUS_TOKEN", TOKEN)
    monkeypatch.setenv("CASESYNC_THALAMUS_PASSWORD", PASSWORD)
    monkeypatch.setenv("CASESYNC_THALAMUS_PRINCIPAL", "operator@example.com")
    monkeypatch.setenv("CASESYNC_REDIS_URL", f"redis://:{REDIS_PASSWORD}@redis:6379/0")


def test_secrets_are_masked_in_the_effective_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    secret_settings(monkeypatch)
    shown = load_settings().masked()
    assert shown["CASESYNC_THALAMUS_TOKEN"] == "**********"
    assert shown["CASESYNC_THALAMUS_PASSWORD"] == "**********"
    assert shown["CASESYNC_THALAMUS_PRINCIPAL"] == "operator@example.com"
    assert shown["CASESYNC_REDIS_URL"] == "redis://:**********@redis:6379/0"
    text = json.dumps(shown)
    for secret in (TOKEN, PASSWORD, REDIS_PASSWORD):
        assert secret not in text


def test_masked_settings_name_every_field_by_its_variable() -> None:
    shown = load_settings().masked()
    assert list(shown) == [ENV_PREFIX + name.upper() for name in Settings.model_fields]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw-1@redis:6379/0", "redis://:**********@redis:6379/0"),
        (
            "rediss://default:pw%40x@r.example.com:6380/1",
            "rediss://default:**********@r.example.com:6380/1",
        ),
        ("redis://redis:6379/0?password=pw-1", "redis://redis:6379/0?password=**********"),
        ("redis://redis:6379/0", "redis://redis:6379/0"),
        ("redis://user@redis:6379/0", "redis://user@redis:6379/0"),
        (
            "sentinel://:pw-1@s1:26379;sentinel://:pw-1@s2:26379/0",
            "sentinel://:**********@s1:26379;sentinel://:**********@s2:26379/0",
        ),
    ],
)
def test_a_password_in_the_redis_url_is_masked(
    monkeypatch: pytest.MonkeyPatch, url: str, shown: str
) -> None:
    monkeypatch.setenv("CASESYNC_REDIS_URL", url)
    assert load_settings().masked()["CASESYNC_REDIS_URL"] == shown


@pytest.mark.parametrize("as_json", [False, True])
def test_casesync_config_never_prints_a_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    secret_settings(monkeypatch)
    assert main(["config", "--json"] if as_json else ["config"]) == 0
    out = capsys.readouterr().out
    assert "CASESYNC_THALAMUS_TOKEN" in out
    assert "**********" in out
    for secret in (TOKEN, PASSWORD, REDIS_PASSWORD):
        assert secret not in out


def test_casesync_config_json_is_the_masked_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CASESYNC_CONCURRENCY", "12")
    assert main(["config", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["CASESYNC_CONCURRENCY"] == 12
    assert shown == load_settings().masked()


def test_secret_files_supply_the_token_and_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "thalamus_token").write_text(f"{TOKEN}\n", encoding="utf-8")
    (secrets / "thalamus_password").write_text(PASSWORD, encoding="utf-8")
    monkeypatch.setenv("CASESYNC_SECRETS_DIR", str(secrets))
    settings = load_settings()
    assert settings.thalamus_token is not None
    assert settings.thalamus_token.get_secret_value() == TOKEN
    assert settings.thalamus_password is not None
    assert settings.thalamus_password.get_secret_value() == PASSWORD


def test_a_variable_wins_over_a_secret_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "thalamus_token").write_text("from-file", encoding="utf-8")
    monkeypatch.setenv("CASESYNC_SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("CASESYNC_THALAMUS_TOKEN", "from-variable")
    settings = load_settings()
    assert settings.thalamus_token is not None
    assert settings.thalamus_token.get_secret_value() == "from-variable"
    assert settings.thalamus_password is None
