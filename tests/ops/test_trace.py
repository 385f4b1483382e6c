"""Reading a case's trace back as a timeline (``casesync trace``), on fakeredis and a real server.

Records are written with :func:`core.trace.add`, as intake and the applier write them.
"""

from __future__ import annotations

import json

import redis

from core import outcomes, trace
from core.events import parse_event
from core.guards import order_key
from core.outcomes import Outcome
from ops.trace import case_timeline, entry_timeline, event_timeline
from tests.conftest import EVENTS, case_event

NOW = 1_795_861_200.0
CASE = 12345
SOURCE = "urn:example:billing"


def write(client: redis.Redis, *records: trace.Record) -> None:
    pipe = client.pipeline(transaction=True)
    trace.add(pipe, trace.DEFAULT_BOUNDS, list(records))
    pipe.execute()


def arrival(
    event_id: str, entry: str, at: float, time: str = "2026-11-28T10:15:00Z"
) -> trace.Record:
    raw = json.dumps(case_event(event_id, CASE, source=SOURCE, time=time))
    return trace.arrived(entry, parse_event(raw, now=NOW), at)


def ended(event_id: str, kind: str, attempts: int, **details: object) -> Outcome:
    return Outcome(kind, event_id, SOURCE, CASE, attempts, **details)  # type: ignore[arg-type]


def subject(event_id: str, entry: str) -> trace.Subject:
    return trace.Subject(CASE, entry, SOURCE, event_id)


def test_a_case_timeline_lists_every_step_oldest_first(any_redis: redis.Redis) -> None:
    e1 = subject("e1", "1-0")
    failed = trace.Attempt(1, NOW + 1, http_status=503, error="TransientError")
    # The applier's records may reach Redis before a later arrival's: the timeline sorts.
    write(any_redis, arrival("e1", "1-0", NOW))
    write(any_redis, trace.rescheduled(e1, NOW + 1.1, why="retry", delay=0.5, tried=failed))
    write(
        any_redis,
        trace.outcome(
            e1,
            NOW + 3,
            ended("e1", outcomes.APPLIED, 2, http_status=201),
            tried=trace.Attempt(2, NOW + 2, http_status=201),
        ),
    )
    write(any_redis, arrival("e2", "2-0", NOW + 0.5))

    timeline = case_timeline(any_redis, CASE)

    assert [(s.entry, s.step, s.at) for s in timeline.steps] == [
        ("1-0", "arrived", NOW),
        ("2-0", "arrived", NOW + 0.5),
        ("1-0", "attempt", NOW + 1),
        ("1-0", "attempt", NOW + 2),
        ("1-0", "outcome", NOW + 3),
    ]
    assert timeline.as_json()["timeline"][2] == {
        "time": "2026-11-28T10:20:01.000Z",
        "entry": "1-0",
        "source": SOURCE,
        "id": "e1",
        "step": "attempt",
        "attempt": 1,
        "httpStatus": 503,
        "error": "TransientError",
        "then": "retry",
        "delay": 0.5,
    }
    assert timeline.as_json()["timeline"][3]["then"] == "applied"
    assert [event.as_json() for event in timeline.events()] == [
        {
            "entry": "1-0",
            "source": SOURCE,
            "id": "e1",
            "eventTime": "2026-11-28T10:15:00Z",
            "outcome": "applied",
            "reason": None,
            "attempts": 2,
        },
        {
            "entry": "2-0",
            "source": SOURCE,
            "id": "e2",
            "eventTime": "2026-11-28T10:15:00Z",
            "outcome": None,
            "reason": None,
            "attempts": 0,
        },
    ]


def test_a_superseded_outcome_names_the_newer_change_by_time_and_entry(
    any_redis: redis.Redis,
) -> None:
    newer = parse_event(json.dumps(case_event("new", CASE, time="2026-11-28T10:16:00Z")), now=NOW)
    winner = order_key(newer.time, "1795860000000-3")
    outcome = ended("old", outcomes.SUPERSEDED, 1)
    write(any_redis, trace.outcome(subject("old", "1-0"), NOW, outcome, superseded_by=winner))

    [step] = case_timeline(any_redis, CASE).steps

    assert step.details["supersededBy"] == {
        "orderKey": winner,
        "eventTime": "2026-11-28T10:16:00Z",
        "entry": "1795860000000-3",
    }


def test_waits_read_as_wait_steps(any_redis: redis.Redis) -> None:
    busy = trace.rescheduled(subject("e1", "1-0"), NOW, why="busyCase", delay=0.05)
    fault = trace.rescheduled(
        subject("e1", "1-0"), NOW + 1, why="redisFault", delay=2, error="ConnectionError"
    )
    write(any_redis, busy, fault)

    steps = case_timeline(any_redis, CASE).steps

    assert [(s.step, s.details) for s in steps] == [
        ("wait", {"why": "busyCase", "delay": 0.05}),
        ("wait", {"why": "redisFault", "delay": 2, "error": "ConnectionError"}),
    ]


def test_one_event_is_found_by_source_and_id_every_entry_of_it_included(
    any_redis: redis.Redis,
) -> None:
    # A replayed dead letter is a new entry of the same (source, id).
    write(any_redis, arrival("e1", "1-0", NOW), arrival("e2", "2-0", NOW + 1))
    write(any_redis, arrival("e1", "3-0", NOW + 2))

    timeline = event_timeline(any_redis, SOURCE, "e1")

    assert timeline is not None
    assert timeline.case_id == CASE
    assert [step.entry for step in timeline.steps] == ["1-0", "3-0"]
    assert event_timeline(any_redis, SOURCE, "unknown") is None
    assert event_timeline(any_redis, "urn:other", "e1") is None


def test_one_entry_is_found_through_the_events_stream(any_redis: redis.Redis) -> None:
    entry = str(any_redis.xadd(EVENTS, {"event": json.dumps(case_event("e1", CASE))}))
    write(any_redis, arrival("e1", entry, NOW), arrival("e2", "2-0", NOW + 1))

    timeline = entry_timeline(any_redis, EVENTS, entry)

    assert timeline is not None
    assert [(step.entry, step.step) for step in timeline.steps] == [(entry, "arrived")]
    assert entry_timeline(any_redis, EVENTS, "1-1") is None, "no such entry"


def test_nothing_traced_is_an_empty_timeline(any_redis: redis.Redis) -> None:
    assert case_timeline(any_redis, CASE).steps == []


def test_unreadable_records_are_skipped(any_redis: redis.Redis) -> None:
    write(any_redis, arrival("e1", "1-0", NOW))
    any_redis.lpush(trace.case_key(CASE), "not json", "[]", '{"step": "arrived"}')
    any_redis.lpush(trace.case_key(CASE), json.dumps({"t": NOW + 1, "step": "from the future"}))

    steps = case_timeline(any_redis, CASE).steps

    assert [(step.entry, step.step) for step in steps] == [("1-0", "arrived")]
