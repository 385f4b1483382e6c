"""Issue 10 §2: Redis fail-over for real. A primary, a replica and three Sentinels; workers on a
``sentinel://`` URL; 500 comment-bearing events in flight; kill -9 of the primary.

What a user checks afterwards: every event has one outcome, no comment is on its case twice;
and how long the pipeline stood still. The figures are printed (``pytest -s``).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from ops import processes
from tests.conftest import EVENTS, RESULTS, case_event
from tests.e2e.conftest import Pipeline
from tests.e2e.sentinels import REPLICATION_LAG, SentinelSetup, running_sentinels

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

CASES = range(3000, 3125)
PER_CASE = 4  # 500 events
#: Outcomes written before the kill: the rest are in flight, queued or not yet taken.
KILL_AFTER = 100


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[SentinelSetup]:
    with running_sentinels(tmp_path / "redis") as running:
        yield running


@pytest.fixture
def failover(pipeline: Pipeline, servers: SentinelSetup) -> Iterator[Pipeline]:
    """The pipeline on the Sentinels' primary; its workers stop before the servers do."""
    with ExitStack() as stack:
        client = servers.master()
        stack.callback(client.close)
        yield Pipeline(client, servers.url, pipeline.simulator, pipeline.logs, stack)


def _events() -> list[dict[str, Any]]:
    """Events with one comment each, found nowhere else; within a case, a later one is newer."""
    return [
        case_event(
            f"f{case}-{n}",
            case,
            time=f"2026-11-28T10:00:{n:02d}Z",
            status=["Open", "In Progress", "Resolved", "Closed"][n % 4],
            comments=[{"description": f"fail-over {case}-{n}"}],
        )
        for case in CASES
        for n in range(PER_CASE)
    ]


def _replicated(client: redis.Redis) -> None:
    """Wait until the replica has every write made so far (as a careful publisher would)."""
    pipe = client.pipeline(transaction=False)
    pipe.set("test:replicated", "1")
    pipe.execute_command("WAIT", 1, 5000)
    assert pipe.execute()[1] == 1, "the replica confirmed the published events"


def _outcome_entries(client: redis.Redis) -> list[tuple[str, dict[str, str]]]:
    """The results stream as the current primary has it; empty while there is none."""
    with contextlib.suppress(redis.RedisError):
        entries: Any = client.xrange(RESULTS)
        return list(entries)
    return []


def _wait_for_outcomes(client: redis.Redis, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(_outcome_entries(client)) < count:
        assert time.monotonic() < deadline, f"fewer than {count} outcomes within {timeout} s"
        time.sleep(0.2)


@dataclass(frozen=True)
class Figures:
    """What a user would check after the fail-over."""

    in_flight: int  # events without an outcome at the kill
    missing: int  # events without an outcome at the end
    doubled: int  # events with more than one outcome
    comments_twice: int
    flowing_again: float  # seconds from the kill to the first outcome written after it
    last_outcome: float  # seconds from the kill to the last outcome

    def line(self) -> str:
        return (
            f"fail-over: {self.in_flight} events in flight at the kill; "
            f"{self.missing} missing, {self.doubled} doubled, "
            f"{self.comments_twice} comments posted twice; outcomes again "
            f"{self.flowing_again:.1f} s after the kill, the last {self.last_outcome:.1f} s"
        )


def _figures(
    pipeline: Pipeline, events: list[dict[str, Any]], in_flight: int, killed_ms: int
) -> Figures:
    entries = _outcome_entries(pipeline.redis)
    per_event = Counter(_request_id(fields) for _, fields in entries)
    after = [int(entry_id.split("-")[0]) - killed_ms for entry_id, _ in entries]
    after = [ms for ms in after if ms > 0]
    twice = 0
    for case_id in CASES:
        posted = Counter(c["description"] for c in pipeline.case(case_id)["comments"])
        twice += sum(1 for count in posted.values() if count > 1)
    return Figures(
        in_flight=in_flight,
        missing=sum(1 for e in events if e["id"] not in per_event),
        doubled=sum(1 for count in per_event.values() if count > 1),
        comments_twice=twice,
        flowing_again=min(after, default=-1000) / 1000,
        last_outcome=max(after, default=-1000) / 1000,
    )


def _request_id(fields: dict[str, str]) -> str:
    return str(json.loads(fields["event"])["data"]["requestId"])


def test_a_killed_primary_fails_over_losing_and_doubling_nothing(
    failover: Pipeline, servers: SentinelSetup
) -> None:
    failover.simulator.admin.set_faults(latency_ms=20, jitter_ms=20)
    events = _events()
    settings = {
        "CASESYNC_REDIS_SENTINEL_MASTER": processes.SENTINEL_MASTER,
        # Past the replica's lag, so the WAIT for a batch's attempt marks is confirmed.
        "CASESYNC_REDIS_WAIT_TIMEOUT": str(REPLICATION_LAG * 2),
        # Small batches, taken one after another as in a steady flow: with the default (100),
        # every event's case is taken in the first second and the kill finds no fresh mark.
        "CASESYNC_INTAKE_BATCH": "10",
    }
    failover.start_worker(**settings)
    failover.start_worker(**settings)
    failover.publish(*events)
    _replicated(failover.redis)
    _wait_for_outcomes(failover.redis, KILL_AFTER, timeout=60)
    in_flight = len(events) - len(_outcome_entries(failover.redis))
    killed_ms = int(time.time() * 1000)
    servers.kill_primary()
    _wait_for_outcomes(failover.redis, len(events), timeout=90)
    time.sleep(1)  # nothing more may arrive
    assert servers.primary_named() == servers.replica_port, "the replica was promoted"
    figures = _figures(failover, events, in_flight, killed_ms)
    print(figures.line())
    assert failover.redis.xlen(EVENTS) == len(events), "no event was lost"
    assert in_flight > 100, "the kill came with updates in flight"
    assert (figures.missing, figures.doubled, figures.comments_twice) == (0, 0, 0)
    assert failover.dead_letters() == []
    assert all(worker.poll() is None for worker in failover.workers), "no worker stopped"
