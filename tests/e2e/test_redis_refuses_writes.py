"""Issue 10 §4: Redis answers but refuses writes, with events in flight.

Two faults of a Redis that is up and reachable: it is full (``maxmemory`` reached under
``noeviction``: ``OOM``), and it became a replica under the workers (a fail-over promoted
another server: ``READONLY``). While it lasts, ``casesync status`` must say so; once it clears,
the workers must resume by themselves, every event ending once, no comment posted twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pytest

from tests.e2e.conftest import Pipeline
from tests.e2e.test_faults import _assert_each_once, _comment_events
from tests.refusing_redis import RefusingRedis, client_of, refusing_redis

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

#: Comment-bearing events, and the shared rate cap that keeps most of them in flight at the fault.
EVENTS = 150
RATE_CAP = 40
#: How long Redis refuses writes.
FAULT_SECONDS = 6.0
#: Outcomes written before the fault: the workers are running at full speed by then.
BEFORE_FAULT = 10


@pytest.fixture
def servers() -> Iterator[RefusingRedis]:
    with refusing_redis() as running:
        yield running


class Fault(NamedTuple):
    inject: Callable[[RefusingRedis], None]
    clear: Callable[[RefusingRedis], None]
    #: The error code Redis answers writes with, which ``casesync status`` shows.
    code: str


FAULTS = {
    "out of memory": Fault(RefusingRedis.fill_memory, RefusingRedis.free_memory, "OOM"),
    "read-only replica": Fault(
        RefusingRedis.promote_standby, RefusingRedis.promote_primary, "READONLY"
    ),
}


def status(url: str) -> tuple[int, dict[str, Any]]:
    """``casesync status --json --no-sample`` as an operator runs it: exit code and report."""
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "status", "--json", "--no-sample"],
        env={**os.environ, "CASESYNC_REDIS_URL": url},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    try:
        shown: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        shown = {"unreadable": done.stdout + done.stderr}
    return done.returncode, shown


@pytest.mark.parametrize("fault", list(FAULTS))
def test_workers_keep_every_event_while_redis_refuses_writes_and_resume_by_themselves(
    servers: RefusingRedis, pipeline: Pipeline, fault: str
) -> None:
    # ``servers`` comes first, so it is stopped last: after the pipeline has stopped the worker.
    inject, clear, code = FAULTS[fault]
    own = Pipeline(
        client_of(servers.url), servers.url, pipeline.simulator, pipeline.logs, pipeline.stack
    )
    pipeline.stack.callback(own.redis.close)
    events = _comment_events(range(2000, 2050), 3)
    assert len(events) == EVENTS
    worker = own.start_worker(CASESYNC_THALAMUS_MAX_RPS=str(RATE_CAP))
    own.publish(*events)
    own.wait_until(lambda: len(own.outcomes()) >= BEFORE_FAULT, timeout=60)

    inject(servers)
    injected = time.monotonic()
    in_flight = EVENTS - len(own.outcomes())
    time.sleep(1.5)  # the workers meet the refusals
    during_code, during = status(servers.url)
    time.sleep(max(0.0, FAULT_SECONDS - (time.monotonic() - injected)))
    alive_through_fault = worker.poll() is None
    ended_during_fault = len(own.outcomes())

    clear(servers)
    cleared = time.monotonic()
    own.wait_until(lambda: len(own.outcomes()) > ended_during_fault, timeout=30)
    flowing = time.monotonic() - cleared
    own.wait_for_outcomes(EVENTS, timeout=60)
    all_done = time.monotonic() - cleared
    after_code, after = status(servers.url)  # and meanwhile, nothing more may arrive

    print(
        f"\n{fault}: {in_flight} of {EVENTS} in flight at the fault, "
        f"{ended_during_fault - (EVENTS - in_flight)} ended during it; "
        f"flowing {flowing:.1f} s after clearing, all done {all_done:.1f} s; "
        f"worker alive through the fault: {alive_through_fault}; "
        f"status during: exit {during_code}, {during.get('redisRefusesWrites')!r}"
    )
    assert in_flight > EVENTS // 2
    assert alive_through_fault, "the worker kept running"
    _assert_each_once(own, events)
    assert during_code == 1, during
    assert str(during.get("redisRefusesWrites")).startswith(code), during
    assert any("Redis refuses writes" in problem for problem in during["problems"]), during
    assert flowing <= 30, "events flow again within 30 s of Redis taking writes"
    assert (after_code, after.get("redisRefusesWrites")) == (0, None), after
    logs = own.worker_logs()
    assert "Redis refuses writes" in logs
    assert "Redis accepts writes again" in logs
