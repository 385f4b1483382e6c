"""Network faults on both of a worker's links, Redis and Thalamus (issue 10 §3), end to end.

For each fault, two lanes run at once, each with its own worker, its own Redis database and its
own 300 comment-bearing events: in one lane the workers reach Redis through a fault proxy, in the
other they reach the Thalamus simulator through one. With the events in flight the fault is set,
held, and cleared; then a user's checks: no event lost, no outcome doubled, no comment posted
twice, and a new event flows again within 30 s of the fault clearing (the time is printed: ``-s``).

The workers run with the end-to-end tests' short time-outs; ``CASESYNC_TEST_DEFAULT_TIMEOUTS=1``
runs them with the production defaults instead, to report production's figures.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from settings import Settings
from tests.conftest import case_event
from tests.e2e.conftest import Pipeline
from tests.e2e.fault_proxy import FaultProxy, Mode

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

#: The settings that decide how soon a dead connection is noticed and its work handed on.
TIMEOUT_SETTINGS = (
    "redis_timeout",
    "connect_timeout",
    "read_timeout",
    "write_timeout",
    "pool_timeout",
    "visibility_timeout",
    "case_lock_ttl",
    "claim_idle",
)
PRODUCTION_TIMEOUTS = os.environ.get("CASESYNC_TEST_DEFAULT_TIMEOUTS") == "1"

EVENTS_PER_LANE = 300
PER_CASE = 3
#: Events a worker finishes before the 300 are published, so it is up and running.
WARM_UP = 5
#: The issue's bound: events flow again within this many seconds of the fault clearing.
FLOWING_AGAIN = 30.0
#: Generous bound on finishing every event once the fault cleared.
ALL_DONE = 200.0
#: Generous bound on a worker's giving up on a dead socket once every event is done: longer than
#: any time-out (Thalamus reads: 30 s by default) plus kombu's check of its BRPOP.
STUCK_BOUND = 60.0


@dataclass(frozen=True)
class Fault:
    mode: Mode
    #: Seconds the fault lasts.
    hold: float


FAULTS = {
    "latency 2 s": Fault(Mode.LATENCY, hold=6.0),
    "black hole 20 s": Fault(Mode.BLACK_HOLE, hold=20.0),
    "reset mid-response": Fault(Mode.RESET, hold=5.0),
    "half-open": Fault(Mode.HALF_OPEN, hold=5.0),
}


@dataclass
class Lane:
    """One link under a fault: its proxy, its database, its worker's settings, its cases."""

    link: str
    pipeline: Pipeline
    proxy: FaultProxy
    worker_settings: dict[str, str]
    first_case: int


@dataclass
class Timeline:
    """When the events went through, around the fault."""

    in_flight: int = 0
    done_during_fault: int = 0
    flowing_after: float = 0.0
    all_done_after: float = 0.0
    #: When the workers had closed every connection the fault made half-open (None: not yet,
    #: a thread still waits on a dead socket).
    dead_closed_after: float | None = None


@dataclass(frozen=True)
class Report:
    link: str
    fault: str
    timeline: Timeline
    lost: int
    doubled: int
    comments_twice: int
    comments_missing: int
    dead_letters: int
    resets: int
    dead_connections: int

    def line(self) -> str:
        timeline = self.timeline
        closed = timeline.dead_closed_after
        closed_after = "never" if closed is None else f"after {closed:.1f} s"
        return (
            f"{self.link:<8} {self.fault:<19} in flight {timeline.in_flight}, "
            f"done during the fault {timeline.done_during_fault:3d}, lost {self.lost}, "
            f"doubled {self.doubled}, comments twice {self.comments_twice}, "
            f"missing {self.comments_missing}, dead letters {self.dead_letters}; "
            f"flowing after {timeline.flowing_after:4.1f} s, "
            f"all done after {timeline.all_done_after:4.1f} s, "
            f"{self.dead_connections} half-open sockets closed {closed_after}"
            f" (resets {self.resets})"
        )


def _timeouts() -> dict[str, str]:
    if not PRODUCTION_TIMEOUTS:
        return {}
    return {
        f"CASESYNC_{name.upper()}": str(Settings.model_fields[name].default)
        for name in TIMEOUT_SETTINGS
    }


def _stamp(second: int) -> str:
    return f"2026-11-28T10:{second // 60:02d}:{second % 60:02d}Z"


def _comment_events(first_case: int, count: int, tag: str) -> list[dict[str, Any]]:
    """``count`` events, ``PER_CASE`` per case, each with one comment no other event has."""
    return [
        case_event(
            f"{tag}-{n}",
            first_case + n // PER_CASE,
            time=_stamp(n % PER_CASE),
            status=["Open", "In Progress", "Resolved"][n % PER_CASE],
            comments=[{"description": f"{tag} comment {n}"}],
        )
        for n in range(count)
    ]


def _with_db(url: str, db: int) -> str:
    return url.rsplit("/", 1)[0] + f"/{db}"


@pytest.fixture
def lanes(pipeline: Pipeline, redis_url: str, tmp_path: Path) -> list[Lane]:
    """The Redis lane (database 1, Redis behind a proxy) and the Thalamus lane (database 2, the
    simulator behind a proxy); both databases empty, both proxies stopped at the end."""
    redis_address = urlsplit(redis_url)
    simulator_address = urlsplit(pipeline.simulator.url)
    redis_proxy = FaultProxy((redis_address.hostname or "", redis_address.port or 6379))
    thalamus_proxy = FaultProxy((simulator_address.hostname or "", simulator_address.port or 80))
    built = []
    for number, (link, proxy) in enumerate(
        [("redis", redis_proxy), ("thalamus", thalamus_proxy)], start=1
    ):
        pipeline.stack.enter_context(proxy)
        url = _with_db(redis_url, number)
        client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=10)
        pipeline.stack.callback(client.close)
        client.flushdb()
        logs = tmp_path / link
        logs.mkdir()
        own = Pipeline(client, url, pipeline.simulator, logs, pipeline.stack)
        to_proxy = (
            {"CASESYNC_REDIS_URL": proxy.url("redis", f"/{number}")}
            if link == "redis"
            else {"CASESYNC_THALAMUS_URL": proxy.url("http", simulator_address.path)}
        )
        built.append(Lane(link, own, proxy, {**_timeouts(), **to_proxy}, 1000 + 1500 * number))
    return built


def _outcomes_by_event(pipeline: Pipeline) -> Counter[str]:
    return Counter(o["data"]["requestId"] for o in pipeline.outcomes())


def _comment_counts(pipeline: Pipeline, events: list[dict[str, Any]]) -> Counter[str]:
    """How often each of the events' comments is on its case in the simulator."""
    posted: Counter[str] = Counter()
    for case_id in {e["data"]["caseInstanceId"] for e in events}:
        posted.update(c["description"] for c in pipeline.case(case_id)["comments"])
    return posted


def _run_lane(lane: Lane, name: str, fault: Fault) -> Report:
    pipeline = lane.pipeline
    cases = EVENTS_PER_LANE // PER_CASE
    warm_up = _comment_events(lane.first_case, WARM_UP, f"{lane.link}-warm-up")
    events = _comment_events(lane.first_case + 10, EVENTS_PER_LANE, f"{lane.link}-{name}")
    probe = _comment_events(lane.first_case + 10 + cases, 1, f"{lane.link}-probe")
    everything = warm_up + events + probe
    pipeline.start_worker(**lane.worker_settings)
    pipeline.publish(*warm_up)
    pipeline.wait_for_outcomes(len(warm_up), timeout=60)
    pipeline.publish(*events)
    lane.proxy.set(fault.mode)
    done_before = len(pipeline.outcomes())
    timeline = Timeline(in_flight=len(warm_up) + len(events) - done_before)
    time.sleep(fault.hold)
    lane.proxy.clear()
    cleared = time.monotonic()
    timeline.done_during_fault = len(pipeline.outcomes()) - done_before
    pipeline.publish(*probe)  # straight into Redis: a new event, after the fault
    pipeline.wait_until(lambda: probe[0]["id"] in _outcomes_by_event(pipeline), timeout=ALL_DONE)
    timeline.flowing_after = time.monotonic() - cleared
    pipeline.wait_for_outcomes(len(everything), timeout=ALL_DONE)
    timeline.all_done_after = time.monotonic() - cleared
    if _within(STUCK_BOUND, lambda: lane.proxy.counts.dead_open == 0):
        timeline.dead_closed_after = time.monotonic() - cleared
    time.sleep(1)  # nothing more may arrive
    return _report(lane, name, everything, timeline)


def _within(seconds: float, check: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _report(lane: Lane, name: str, events: list[dict[str, Any]], timeline: Timeline) -> Report:
    per_event = _outcomes_by_event(lane.pipeline)
    posted = _comment_counts(lane.pipeline, events)
    comments = [e["data"]["comments"][0]["description"] for e in events]
    return Report(
        link=lane.link,
        fault=name,
        timeline=timeline,
        lost=sum(1 for e in events if per_event[e["id"]] == 0),
        doubled=sum(1 for e in events if per_event[e["id"]] > 1),
        comments_twice=sum(1 for text in comments if posted[text] > 1),
        comments_missing=sum(1 for text in comments if posted[text] == 0),
        dead_letters=len(lane.pipeline.dead_letters()),
        resets=lane.proxy.counts.resets,
        dead_connections=lane.proxy.counts.dead,
    )


@pytest.mark.parametrize("name", list(FAULTS))
def test_a_network_fault_on_either_link_loses_nothing_and_events_flow_again(
    lanes: list[Lane], name: str
) -> None:
    fault = FAULTS[name]
    with ThreadPoolExecutor(len(lanes)) as pool:
        reports = list(pool.map(lambda lane: _run_lane(lane, name, fault), lanes))
    timeouts = "production" if PRODUCTION_TIMEOUTS else "test"
    for report in reports:
        print(f"\n[{timeouts} time-outs] {report.line()}", end="")
    for report in reports:
        assert report.lost == 0, report.line()
        assert report.doubled == 0, report.line()
        assert report.comments_twice == 0, report.line()
        assert report.comments_missing == 0, report.line()
        assert report.dead_letters == 0, report.line()
        assert report.timeline.flowing_after <= FLOWING_AGAIN, report.line()
        assert report.timeline.dead_closed_after is not None, "no thread stuck on a dead socket"
