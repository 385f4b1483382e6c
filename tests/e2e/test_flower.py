"""Flower as an operator sees it: every task from its start, FAILURE when an event was
dead-lettered, and no comment or caseData on show. Checked through Flower's own HTTP API."""

from __future__ import annotations

import sys
import time
from typing import Any

import httpx
import pytest

from ops import processes
from tests.conftest import case_event
from tests.e2e.conftest import Pipeline

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

#: Flower's API answers only behind its basic auth, as the README runs it.
AUTH = ("ops", "flower-test-password")

#: Texts no repr of a task may show: they are customer data.
COMMENT = "customer says her card ends 4242"
CASE_DATA_VALUE = 987654.25


def _start_flower(pipeline: Pipeline) -> str:
    port = processes.free_port()
    argv = [sys.executable, "-m", "celery", "-A", "tasks", "flower"]
    argv += [f"--port={port}", "--address=127.0.0.1", f"--basic-auth={AUTH[0]}:{AUTH[1]}"]
    log = (pipeline.logs / "flower.log").open("wb")
    pipeline.stack.callback(log.close)
    process = processes.start_process(argv, pipeline.env(), log)
    pipeline.stack.callback(processes.stop_process, process)
    url = f"http://127.0.0.1:{port}"
    pipeline.wait_until(lambda: _answers(f"{url}/api/workers"), timeout=60)
    return url


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, auth=AUTH, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _tasks(url: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = httpx.get(f"{url}/api/tasks", auth=AUTH, timeout=5).json()
    return found


def _wait_for_states(url: str, wanted: int, timeout: float = 60) -> list[dict[str, Any]]:
    """The tasks once ``wanted`` of them have ended (SUCCESS or FAILURE)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ended = [t for t in _tasks(url).values() if t.get("state") in ("SUCCESS", "FAILURE")]
        if len(ended) >= wanted:
            return ended
        time.sleep(0.3)
    raise AssertionError(f"Flower shows {_tasks(url)} after {timeout} s")


def test_flower_shows_failure_for_a_dead_lettered_event_and_no_customer_data(
    pipeline: Pipeline,
) -> None:
    pipeline.start_worker()
    url = _start_flower(pipeline)
    # Workers send no task events until Flower asks (CASESYNC_TASK_EVENTS is off by default);
    # Flower asks every 5 s, and the worker says when it starts sending them.
    pipeline.wait_until(lambda: "enabled by remote" in pipeline.worker_logs(), timeout=30)
    good = case_event(
        "good-1",
        31,
        status="Open",
        comments=[{"description": COMMENT}],
        caseData={"amount": CASE_DATA_VALUE},
    )
    pipeline.publish(good)
    pipeline.wait_for_outcomes(1)
    bad = case_event("bad-1", 32, status="Frozen", comments=[{"description": COMMENT}])
    pipeline.publish(bad)
    pipeline.wait_for_outcomes(2)
    tasks = _wait_for_states(url, 2)
    by_state = {task["state"]: task for task in tasks}
    assert set(by_state) == {"SUCCESS", "FAILURE"}
    failed, succeeded = by_state["FAILURE"], by_state["SUCCESS"]
    assert "bad-1" in failed["exception"]
    assert "InvalidName" in failed["exception"]
    assert "good-1" in succeeded["args"]
    assert "31" in succeeded["args"]
    assert "'applied': 1" in succeeded["result"]
    for task in tasks:
        assert task["received"], "Flower saw the task from its start"
        shown = " ".join(str(task.get(field)) for field in ("args", "kwargs", "result"))
        assert COMMENT not in shown
        assert str(CASE_DATA_VALUE) not in shown
    # The task of the dead-lettered event is not retried or redelivered: still two tasks.
    time.sleep(2)
    assert len(_tasks(url)) == 2
