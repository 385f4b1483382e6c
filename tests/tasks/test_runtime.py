"""The Celery side as a worker process meets it: importing builds nothing, one module builds the
app (what ``celery -A tasks`` finds), a task message names its events and shows nothing private,
and a process's runtime connects to Redis as configured."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from core.events import replyto_problem
from core.schedule import Job
from settings import Settings, SettingsError
from tasks.batch import LEGACY_TASK_NAME, TASK_NAME, describe, send_batch
from tasks.intake_step import intake_config
from tasks.runtime import (
    build_runtime,
    close_runtime,
    current_runtime,
    keepalive_options,
    limits_of,
    redis_client,
    sentinel_parts,
)
from tests.conftest import case_event

ROOT = Path(__file__).resolve().parents[2]

COMMENT = "the customer's phone number is 555-0199"
CASE_DATA_VALUE = "DE89-3704-0044-0532-0130-00"


def run_python(code: str, tmp_path: Path, **environment: str) -> Any:
    """Run ``code`` in a fresh interpreter (no CASESYNC_* variable but those given, no .env);
    what it prints as JSON on its last line."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("CASESYNC_")}
    env.update(environment, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


# --- importing builds nothing ------------------------------------------------------------------


def test_importing_tasks_builds_nothing_and_reads_no_setting(tmp_path: Path) -> None:
    # A bad setting would stop any module that read the settings on import.
    code = """if True:
        import json, sys
        import tasks
        first = sorted(m for m in sys.modules if m.split(".")[0] in ("tasks", "celery", "kombu"))
        import tasks.app, tasks.batch, tasks.broker, tasks.intake_step, tasks.runtime
        from celery import _state
        print(json.dumps({
            "first": first,
            "apps": len(list(_state._apps)),
            "celery_module": "tasks.celery" in sys.modules,
        }))
    """
    shown = run_python(code, tmp_path, CASESYNC_CONCURRENCY="not a number")
    assert shown["first"] == ["tasks"], "importing the package imports nothing else"
    assert shown["apps"] == 0, "no Celery app is built by importing the task modules"
    assert shown["celery_module"] is False


# --- the app -----------------------------------------------------------------------------------

DESCRIBE_APP = """
import json
from celery.app.utils import find_app
{prepare}
app = {build}
import tasks.celery
print(json.dumps({{
    "type": type(app).__name__,
    "is_tasks_celery_app": app is tasks.celery.app,
    "tasks": sorted(name for name in app.tasks if name.startswith("casesync.")),
    "task_serializer": app.conf.task_serializer,
    "result_serializer": app.conf.result_serializer,
    "event_serializer": app.conf.event_serializer,
    "accept_content": list(app.conf.accept_content),
    "acks_late": app.conf.task_acks_late,
    "default_queue": app.conf.task_default_queue,
    "transport_options": app.conf.broker_transport_options,
    "task_events": app.conf.worker_send_task_events,
    "steps": sorted(step.__name__ for step in app.steps["worker"]),
    "visibility_setting": app.settings.visibility_timeout,
}}))
"""


@pytest.fixture(scope="module")
def created_app(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What ``tasks.app.create_app`` builds from settings it is given."""
    code = DESCRIBE_APP.format(
        prepare="from settings import load_settings\nfrom tasks.app import create_app",
        build="create_app(load_settings())",
    )
    # tasks.celery is imported last, only to compare; it builds its own app from the same env.
    return run_python(  # type: ignore[no-any-return]
        code,
        tmp_path_factory.mktemp("app"),
        CASESYNC_VISIBILITY_TIMEOUT="123",
        CASESYNC_REDIS_TIMEOUT="7",
        CASESYNC_TASK_QUEUE="casesync-batches",
        CASESYNC_TASK_EVENTS="false",
    )


def test_the_app_registers_the_batch_task(created_app: dict[str, Any]) -> None:
    assert created_app["type"] == "CasesyncApp"
    # And the former design's task, so its messages still queued at an upgrade are not lost.
    assert created_app["tasks"] == sorted([TASK_NAME, LEGACY_TASK_NAME])
    assert TASK_NAME == "casesync.apply_batch"
    assert "IntakeStep" in created_app["steps"], "each worker also runs the stream intake"


def test_the_app_speaks_json_only(created_app: dict[str, Any]) -> None:
    assert created_app["task_serializer"] == "json"
    assert created_app["result_serializer"] == "json"
    assert created_app["event_serializer"] == "json"
    assert created_app["accept_content"] == ["json"], "a pickled message is refused"


def test_a_task_is_acknowledged_when_it_starts(created_app: dict[str, Any]) -> None:
    # From then on the schedule's leases answer for its events.
    assert created_app["acks_late"] is False


def test_the_app_takes_its_broker_settings_from_casesync_settings(
    created_app: dict[str, Any],
) -> None:
    options = created_app["transport_options"]
    assert options["visibility_timeout"] == 123 == created_app["visibility_setting"]
    assert options["socket_timeout"] == 7
    # A consumer's BRPOP on a half-open connection is dropped soon, not after kombu's 50 s.
    assert options["health_check_interval"] == 7
    assert options["socket_keepalive"] is True
    assert created_app["default_queue"] == "casesync-batches"
    assert created_app["task_events"] is False


def test_a_sentinel_broker_uses_the_fixed_transport_and_gives_the_sentinels_the_password(
    tmp_path: Path,
) -> None:
    # kombu's own would stop the worker when the primary dies, and would send the Sentinels
    # no password.
    code = DESCRIBE_APP.format(
        prepare="from settings import load_settings\nfrom tasks.app import create_app",
        build="create_app(load_settings())",
    ).replace(
        '"type": type(app).__name__,',
        '"type": type(app).__name__, "transport": repr(app.connection_for_write().transport),',
    )
    url = "sentinel://:s3cret@127.0.0.1:26379;sentinel://:s3cret@127.0.0.1:26380/0"
    shown = run_python(code, tmp_path, CASESYNC_REDIS_URL=url)
    assert shown["transport"].startswith("<tasks.broker.SentinelTransport object")
    assert shown["transport_options"]["sentinel_kwargs"]["password"] == "s3cret"
    assert shown["transport_options"]["master_name"] == "mymaster"


@pytest.mark.parametrize("imported_first", ["nothing", "tasks.app"])
def test_celery_dash_a_tasks_finds_the_app_of_tasks_celery(
    tmp_path: Path, imported_first: str
) -> None:
    # With tasks.app imported, the package's attribute ``app`` is that module, not an app:
    # Celery must still go on to tasks.celery.
    prepare = "import tasks.app" if imported_first == "tasks.app" else ""
    code = DESCRIBE_APP.format(prepare=prepare, build='find_app("tasks")')

    shown = run_python(code, tmp_path, CASESYNC_VISIBILITY_TIMEOUT="77")

    assert shown["type"] == "CasesyncApp"
    assert shown["is_tasks_celery_app"] is True
    assert shown["tasks"] == sorted([TASK_NAME, LEGACY_TASK_NAME])
    assert shown["transport_options"]["visibility_timeout"] == 77


def test_tasks_celery_refuses_bad_settings_in_one_line(tmp_path: Path) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("CASESYNC_")}
    env.update(PYTHONPATH=str(ROOT), CASESYNC_VISIBILITY_TIMEOUT="5", CASESYNC_REDIS_TIMEOUT="10")
    done = subprocess.run(
        [sys.executable, "-c", "import tasks.celery"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "invalid setting" in done.stderr
    assert "CASESYNC_VISIBILITY_TIMEOUT" in done.stderr.splitlines()[-1]


# --- what a task message shows -----------------------------------------------------------------


def private_jobs() -> list[Job]:
    first = case_event(
        "e1",
        7,
        source="urn:billing",
        comments=[{"description": COMMENT}],
        caseData={"iban": CASE_DATA_VALUE},
    )
    return [
        Job("1700000000000-0", json.dumps(first), attempts=2),
        Job("1700000000000-1", "{broken", lost=1),
    ]


def test_a_batch_is_described_by_entry_source_id_and_case_only() -> None:
    text = describe(private_jobs())

    assert json.loads(text) == [
        {"entry": "1700000000000-0", "source": "urn:billing", "id": "e1", "case": 7},
        {"entry": "1700000000000-1", "source": None, "id": None, "case": None},
    ]
    assert COMMENT not in text
    assert CASE_DATA_VALUE not in text
    assert "iban" not in text


def test_a_sent_batch_carries_its_jobs_and_shows_flower_only_their_names() -> None:
    app = Celery("test", broker="memory://", set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"])
    queue = f"batches-{uuid.uuid4().hex}"
    jobs = private_jobs()

    send_batch(app, queue, jobs)

    with app.connection_for_read() as connection:
        inbox = connection.SimpleQueue(queue)
        message = inbox.get(timeout=5)
        message.ack()
        inbox.close()
    assert message.content_type == "application/json"
    assert message.headers["task"] == TASK_NAME
    assert message.headers["argsrepr"] == describe(jobs)
    assert message.headers["kwargsrepr"] == "{}"
    shown = json.dumps({**message.headers, **message.properties})
    assert COMMENT not in shown
    assert CASE_DATA_VALUE not in shown
    # The body carries the whole jobs, retry state included, for the task to apply.
    [args], _, _ = message.payload
    assert [Job.from_wire(wire) for wire in args] == jobs


# --- settings to intake ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batches", "intake_backlog", "backlog"), [(6, 0, 6), (6, 10, 10), (4, 0, 4)]
)
def test_intake_stops_at_as_many_queued_batches_as_the_pool_runs_unless_told(
    batches: int, intake_backlog: int, backlog: int
) -> None:
    settings = Settings(batches=batches, intake_backlog=intake_backlog, intake_batch=50)
    config = intake_config(settings, "host:1")
    assert config.backlog == backlog
    assert config.batch == 50
    assert config.consumer == "host:1"
    assert config.queue == settings.task_queue


# --- a process's runtime -----------------------------------------------------------------------


def test_a_worker_runtime_needs_the_thalamus_url() -> None:
    with pytest.raises(SettingsError, match="CASESYNC_THALAMUS_URL"):
        build_runtime(Settings(thalamus_url=None))


def test_a_process_builds_its_runtime_once_and_closes_it_at_shut_down() -> None:
    settings = Settings(thalamus_url="http://thalamus.test", concurrency=2)
    try:
        runtime = current_runtime(settings)
        assert current_runtime(settings) is runtime
    finally:
        close_runtime()
    assert runtime.http.is_closed
    fresh = current_runtime(settings)
    try:
        assert fresh is not runtime
    finally:
        close_runtime()


def test_a_sentinel_url_lists_every_sentinel_with_its_password_and_database() -> None:
    hosts, password, db = sentinel_parts(
        "sentinel://:s3cret@10.0.0.1:26379;sentinel://:s3cret@10.0.0.2:26380/2"
    )
    assert hosts == [("10.0.0.1", 26379), ("10.0.0.2", 26380)]
    assert password == "s3cret"
    assert db == 2


def test_a_tls_url_gives_a_tls_connection() -> None:
    client = redis_client(Settings(redis_url="rediss://:pw@cache.example:6380/1"))
    kwargs = client.connection_pool.connection_kwargs
    assert client.connection_pool.connection_class is redis.SSLConnection
    assert kwargs["password"] == "pw"
    assert kwargs["db"] == 1
    assert kwargs["socket_timeout"] == 10.0


def test_a_redis_connection_keeps_tcp_alive_and_checks_its_health(redis_url: str) -> None:
    client = redis_client(Settings(redis_url=redis_url, redis_timeout=4))
    connection = client.connection_pool.get_connection()
    try:
        connection.send_command("PING")
        assert connection.read_response() == "PONG"
        sock: Any = connection._sock
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        for option, value in keepalive_options(4).items():
            assert sock.getsockopt(socket.IPPROTO_TCP, option) == value
        assert connection.health_check_interval == 4
    finally:
        client.connection_pool.release(connection)
        client.close()


def test_a_sentinel_url_follows_the_named_master() -> None:
    settings = Settings(
        redis_url="sentinel://127.0.0.1:26379;sentinel://127.0.0.1:26380",
        redis_sentinel_master="casesync-master",
    )
    pool: Any = redis_client(settings).connection_pool
    assert pool.service_name == "casesync-master"
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26380]


def test_the_workers_check_replyto_and_time_against_the_configured_names_and_settings() -> None:
    settings = Settings(
        events_stream="ops:events",
        results_stream="ops:results",
        dead_letter_stream="ops:dead",
        task_queue="ops-tasks",
        replyto_pattern=r"team:[a-z]+",
        max_clock_skew=60,
    )
    limits = limits_of(settings)

    for stream in ("ops:events", "ops:results", "ops:dead", "ops-tasks", "ops-tasks\x06\x163"):
        assert replyto_problem(stream, limits) is not None, stream
    assert replyto_problem("team:results", limits) is None
    assert "CASESYNC_REPLYTO_PATTERN" in (replyto_problem("billing:results", limits) or "")
    assert limits.max_clock_skew == 60
