"""Contract §3 under real failures: killed workers, dropped Redis connections, a Redis restart,
Thalamus down, a 429 storm, one case's events racing over two workers.

Each test asserts on what reached the simulator and on the streams, never on log lines.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import redis

from ops import processes
from settings import Settings
from tests.conftest import case_event
from tests.e2e.conftest import Pipeline

# Slow: real processes and deliberate outages; each may take a few minutes on a loaded machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _stamp(second: int) -> str:
    return f"2026-11-28T10:{second // 60:02d}:{second % 60:02d}Z"


def _comment_events(cases: range, per_case: int) -> list[dict[str, Any]]:
    """Events with one unique comment each; within a case, later index means newer time."""
    events = []
    for case in cases:
        for n in range(per_case):
            events.append(
                case_event(
                    f"c{case}-{n}",
                    case,
                    time=_stamp(n),
                    status=["Open", "In Progress", "Resolved", "Closed"][n % 4],
                    comments=[{"description": f"comment {case}-{n}"}],
                )
            )
    return events


def _assert_each_once(pipeline: Pipeline, events: list[dict[str, Any]]) -> None:
    """Every event has one outcome, and its comment is on its case exactly once."""
    outcomes = pipeline.outcomes()
    per_event = Counter(o["data"]["requestId"] for o in outcomes)
    assert set(per_event) == {e["id"] for e in events}
    assert max(per_event.values()) == 1, "no event has two outcomes"
    assert pipeline.dead_letters() == []
    for case_id in {e["data"]["caseInstanceId"] for e in events}:
        case = pipeline.case(case_id)
        posted = Counter(c["description"] for c in case["comments"])
        wanted = [
            e["data"]["comments"][0]["description"]
            for e in events
            if e["data"]["caseInstanceId"] == case_id
        ]
        assert {text: posted[text] for text in wanted} == dict.fromkeys(wanted, 1)


def _assert_newest_state(pipeline: Pipeline, events: list[dict[str, Any]]) -> None:
    newest: dict[int, dict[str, Any]] = {}
    for event in events:
        case_id = event["data"]["caseInstanceId"]
        if case_id not in newest or event["time"] > newest[case_id]["time"]:
            newest[case_id] = event
    for case_id, event in newest.items():
        assert pipeline.case(case_id)["status"] == event["data"]["status"]


#: The settings that decide how soon a killed worker's events come back, at their defaults.
RECOVERY_DEFAULTS = {
    f"CASESYNC_{name.upper()}": str(Settings.model_fields[name].default)
    for name in ("visibility_timeout", "case_lock_ttl", "claim_idle", "redis_timeout")
}


def test_a_killed_worker_loses_nothing_and_its_events_come_back_within_two_minutes(
    pipeline: Pipeline,
) -> None:
    pipeline.simulator.admin.set_faults(latency_ms=20, jitter_ms=20)
    events = _comment_events(range(200, 325), 4)  # 500 comment-bearing events
    first = pipeline.start_worker(CASESYNC_CONCURRENCY="32", **RECOVERY_DEFAULTS)
    pipeline.publish(*events)
    pipeline.wait_for_outcomes(60, timeout=60)
    processes.kill_process(first)  # SIGKILL, with updates in flight
    in_flight_at_kill = len(events) - len(pipeline.outcomes())
    assert in_flight_at_kill > 100
    restarted = time.monotonic()
    pipeline.start_worker(CASESYNC_CONCURRENCY="32", **RECOVERY_DEFAULTS)
    pipeline.wait_for_outcomes(len(events), timeout=150)
    assert time.monotonic() - restarted <= 120, "every event has its outcome within 2 minutes"
    time.sleep(1)  # nothing more may arrive
    _assert_each_once(pipeline, events)
    _assert_newest_state(pipeline, events)


def test_dropped_redis_connections_lose_nothing(pipeline: Pipeline) -> None:
    pipeline.simulator.admin.set_faults(latency_ms=5)
    events = _comment_events(range(400, 500), 3)
    pipeline.start_worker()
    pipeline.publish(*events)
    for _ in range(3):
        pipeline.wait_until(lambda: len(pipeline.outcomes()) > 0, timeout=30)
        pipeline.redis.client_kill_filter(_type="normal", skipme=True)
        time.sleep(0.7)
    pipeline.wait_for_outcomes(len(events), timeout=120)
    time.sleep(1)
    _assert_each_once(pipeline, events)


@pytest.fixture
def restartable_redis(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """An embedded server with its append-only file on, and a way to restart it in place."""
    port = processes.free_port()
    data = tmp_path / "redis-data"
    stack = ExitStack()

    def restart() -> None:
        stack.close()
        stack.enter_context(processes.embedded_redis(appendonly=True, data_dir=data, port=port))

    stack.enter_context(processes.embedded_redis(appendonly=True, data_dir=data, port=port))
    try:
        yield f"redis://127.0.0.1:{port}/0", restart
    finally:
        stack.close()


def test_a_redis_restart_loses_nothing(
    pipeline: Pipeline, restartable_redis: tuple[str, Any]
) -> None:
    url, restart = restartable_redis
    own = Pipeline(
        redis.Redis.from_url(url, decode_responses=True, socket_timeout=10),
        url,
        pipeline.simulator,
        pipeline.logs,
        pipeline.stack,
    )
    pipeline.simulator.admin.set_faults(latency_ms=5)
    events = _comment_events(range(600, 700), 3)
    worker = own.start_worker()
    own.publish(*events)
    own.wait_until(lambda: len(own.outcomes()) > 20, timeout=60)
    restart()
    own.wait_for_outcomes(len(events), timeout=120)
    time.sleep(1)
    _assert_each_once(own, events)
    processes.stop_process(worker)  # while its Redis is still there
    own.redis.close()


def test_thalamus_down_pauses_intake_and_dead_letters_nothing(pipeline: Pipeline) -> None:
    pipeline.simulator.admin.set_faults(error_rate_503=1.0)
    first = _comment_events(range(800, 850), 1)
    later = _comment_events(range(850, 900), 1)
    pipeline.start_worker(CASESYNC_MAX_ATTEMPTS="4", CASESYNC_BREAKER_THRESHOLD="3")
    pipeline.publish(*first)
    pipeline.wait_until(lambda: bool(pipeline.redis.exists("casesync:breaker:open")), timeout=30)
    time.sleep(1)  # a read already waiting for entries when the breaker opened may take one
    pipeline.publish(*later)
    time.sleep(30)
    assert pipeline.dead_letters() == []
    group = pipeline.redis.xinfo_groups("casesync:events")[0]
    assert group["lag"] == len(later), "intake took nothing while Thalamus was down"
    pipeline.simulator.admin.set_faults(error_rate_503=0.0)
    pipeline.wait_for_outcomes(len(first) + len(later), timeout=90)
    assert {o["type"] for o in pipeline.outcomes()} == {"casesync.update.applied"}
    _assert_each_once(pipeline, first + later)


def test_a_429_storm_over_two_workers_keeps_to_the_rate_cap(pipeline: Pipeline) -> None:
    cap = 25
    pipeline.simulator.admin.set_faults(rate_429=0.2, retry_after=1)
    events = _comment_events(range(900, 1000), 2)
    settings = {"CASESYNC_THALAMUS_MAX_RPS": str(cap), "CASESYNC_MAX_ATTEMPTS": "20"}
    pipeline.start_worker(**settings)
    pipeline.start_worker(**settings)
    pipeline.publish(*events)
    pipeline.wait_for_outcomes(len(events), timeout=120)
    times = sorted(r["time"] for r in pipeline.simulator.admin.requests())
    busiest = max(sum(1 for t in times[i:] if t < start + 1.0) for i, start in enumerate(times))
    assert busiest <= cap * 1.1
    _assert_each_once(pipeline, events)


def test_one_cases_events_shuffled_over_two_workers_end_in_the_newest_state(
    pipeline: Pipeline,
) -> None:
    pipeline.simulator.admin.set_faults(latency_ms=10, jitter_ms=20)
    events = _comment_events(range(990, 991), 20)
    random.Random(7).shuffle(events)
    pipeline.start_worker()
    pipeline.start_worker()
    pipeline.publish(*events)
    outcomes = pipeline.wait_for_outcomes(len(events), timeout=60)
    _assert_each_once(pipeline, events)
    _assert_newest_state(pipeline, events)
    newest = max(events, key=lambda e: e["time"])
    applied = [o for o in outcomes if o["data"]["requestId"] == newest["id"]]
    assert applied[0]["type"] == "casesync.update.applied"


def test_a_lost_answer_is_read_back_not_sent_again(pipeline: Pipeline) -> None:
    pipeline.simulator.admin.script(5, [{"apply_then_drop": True}])
    pipeline.start_worker()
    event = case_event("e1", 5, status="Open", comments=[{"description": "once only"}])
    pipeline.publish(event)
    [outcome] = pipeline.wait_for_outcomes(1, timeout=30)
    assert outcome["type"] == "casesync.update.applied"
    puts = [r for r in pipeline.simulator.admin.requests() if r["method"] == "PUT"]
    assert len(puts) == 1, "the update that took effect was not sent again"
    _assert_each_once(pipeline, [event])
