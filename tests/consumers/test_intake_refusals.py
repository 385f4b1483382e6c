"""Intake while Redis refuses writes (full, or read-only): it takes nothing, says so once, and
takes the entries as soon as Redis takes writes again. On a real server made to refuse them."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from consumers.intake import Intake, IntakeConfig
from core.redis_faults import WriteRefusals
from core.schedule import Schedule
from tests.consumers.test_intake import EVENTS, GROUP, LEASE, QUEUE, STREAMS, Sent, event, publish
from tests.refusing_redis import RefusingRedis, refusing_redis


@pytest.fixture
def servers() -> Iterator[RefusingRedis]:
    with refusing_redis() as running:
        yield running


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> float:
    """Seconds until ``condition`` held."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "timed out"
        time.sleep(0.01)
    return time.monotonic() - started


@pytest.mark.parametrize(
    ("fault", "clear"),
    [
        (RefusingRedis.fill_memory, RefusingRedis.free_memory),
        (RefusingRedis.promote_standby, RefusingRedis.promote_primary),
    ],
    ids=["full", "read-only"],
)
def test_intake_takes_nothing_while_writes_are_refused_and_resumes_by_itself(
    servers: RefusingRedis,
    caplog: pytest.LogCaptureFixture,
    fault: Callable[[RefusingRedis], None],
    clear: Callable[[RefusingRedis], None],
) -> None:
    caplog.set_level(logging.INFO)
    client = servers.primary
    client.xgroup_create(EVENTS, GROUP, id="0", mkstream=True)
    sent = Sent(client)
    config = IntakeConfig(EVENTS, GROUP, "alive", QUEUE, block_ms=10, backlog=100)
    refusals = WriteRefusals(clock=time.monotonic)
    paused = threading.Event()
    schedule = Schedule(client, lease=LEASE)
    intake = Intake(
        client, config, STREAMS, schedule, sent, paused=paused.is_set, refusals=refusals
    )
    stop = threading.Event()
    thread = threading.Thread(
        target=intake.run, args=(stop,), kwargs={"paused_wait": 0.01, "refused_wait": 0.1}
    )
    thread.start()
    try:
        publish(client, event("e1"))
        _wait_for(lambda: sent.ids == [["e1"]])
        # An entry arrives just before Redis refuses writes, and intake meets the refusal.
        paused.set()
        time.sleep(0.1)
        publish(client, event("e2"))
        fault(servers)
        try:
            paused.clear()
            time.sleep(1.0)
            assert sent.ids == [["e1"]], "nothing handed on while writes are refused"
        finally:
            clear(servers)
        resumed = _wait_for(lambda: sent.ids == [["e1"], ["e2"]])
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert resumed < 2.0, "taken within a few probes of Redis taking writes"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("Redis refuses writes (first seen by intake)")
    assert warnings[1].startswith("Redis accepts writes again")
