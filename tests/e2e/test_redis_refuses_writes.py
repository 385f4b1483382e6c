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
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from ops import processes
from tests.e2e.conftest import Pipeline
from tests.e2e.test_faults import _assert_each_once, _comment_events

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

#: Comment-bearing events, and the shared rate cap that keeps most of them in flight at the fault.
EVENTS = 150
RATE_CAP = 40
#: How long Redis refuses writes.
FAULT_SECONDS = 6.0
#: Outcomes written before the fault: the workers are running at full speed by then.
BEFORE_FAULT = 10


@dataclass
class Servers:
    """The server the workers use, and a second one to fail over to."""

    primary: redis.Redis
    standby: redis.Redis
    url: str

    def port_of(self, client: redis.Redis) -> int:
        return int(client.connection_pool.connection_kwargs["port"])


@pytest.fixture
def servers() -> Iterator[Servers]:
    """Two embedded servers: the workers' primary, and a standby replicating it.

    The standby is what a fail-over promotes. Only because it has replicated the primary can the
    primary then follow it without its data being replaced (a partial resynchronisation).
    """
    with ExitStack() as stack:
        primary_url = stack.enter_context(processes.embedded_redis())
        standby_url = stack.enter_context(processes.embedded_redis())
        primary = _client(primary_url)
        standby = _client(standby_url)
        stack.callback(primary.close)
        stack.callback(standby.close)
        # A replica's first sync waits this long for more replicas to join; none will.
        primary.config_set("repl-diskless-sync-delay", 0)
        found = Servers(primary, standby, primary_url)
        standby.replicaof("127.0.0.1", found.port_of(primary))
        _wait(lambda: standby.info("replication").get("master_link_status") == "up", 20)
        yield found


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=10)


def _wait(check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.02)


def fill_memory(servers: Servers) -> None:
    """Redis is full: ``maxmemory`` is what it uses now, and nothing may be evicted."""
    used = int(servers.primary.info("memory")["used_memory"])
    servers.primary.config_set("maxmemory-policy", "noeviction")
    servers.primary.config_set("maxmemory", used)


def free_memory(servers: Servers) -> None:
    servers.primary.config_set("maxmemory", 0)


def promote_standby(servers: Servers) -> None:
    """A fail-over under the workers: the standby is promoted and the primary follows it, so
    the primary answers reads and refuses writes (``READONLY``). Writes are paused until the
    standby has every one of them, as a managed fail-over does, so none is lost."""
    primary, standby = servers.primary, servers.standby
    primary.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
    offset = int(primary.info("replication")["master_repl_offset"])
    _wait(lambda: int(standby.info("replication")["slave_repl_offset"]) >= offset, 10)
    standby.replicaof("NO", "ONE")
    primary.replicaof("127.0.0.1", servers.port_of(standby))
    primary.execute_command("CLIENT", "UNPAUSE")


def promote_primary(servers: Servers) -> None:
    """The primary takes writes again, with the data it had (nothing reached the standby)."""
    servers.primary.replicaof("NO", "ONE")


FAULTS = {
    "out of memory": (fill_memory, free_memory, "OOM"),
    "read-only replica": (promote_standby, promote_primary, "READONLY"),
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
    servers: Servers, pipeline: Pipeline, fault: str
) -> None:
    inject, clear, code = FAULTS[fault]
    own = Pipeline(
        _client(servers.url), servers.url, pipeline.simulator, pipeline.logs, pipeline.stack
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
    time.sleep(1)  # nothing more may arrive
    after_code, after = status(servers.url)

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
    assert code in str(during.get("redisRefusesWrites")), during
    assert any("Redis refuses writes" in problem for problem in during["problems"]), during
    assert flowing <= 30, "events flow again within 30 s of Redis taking writes"
    assert (after_code, after.get("redisRefusesWrites")) == (0, None), after
    logs = own.worker_logs()
    assert "Redis refuses writes" in logs
    assert "Redis accepts writes again" in logs
    processes.stop_process(worker)  # while its Redis is still there
