"""The trace records and their writer: what a case's trace keeps, and how it stays bounded.

The builders are pure; :func:`core.trace.add` is checked on fakeredis and the real server
(``any_redis``): one capped list per case with a TTL, and the index of each event that arrived.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import redis

from core import outcomes, trace
from core.events import parse_event
from core.guards import order_key, order_key_parts
from core.outcomes import Outcome
from tests.conftest import case_event
from thalamus.errors import OutcomeUnknown, PermanentError, TransientError

NOW = 1_795_861_200.0
CASE = 12345
SECRET_COMMENT = "customer's card ends 4242"
SECRET_VALUE = "IBAN DE89 3704 0044 0532 0130 00"


def subject(entry: str = "1-0", event_id: str = "e1") -> trace.Subject:
    return trace.Subject(CASE, entry, "urn:example:billing", event_id)


def stored(client: redis.Redis, case_id: int = CASE) -> list[dict[str, Any]]:
    """The case's records as stored, oldest first."""
    return [json.loads(text) for text in reversed(client.lrange(trace.case_key(case_id), 0, -1))]


def add(client: redis.Redis, records: list[trace.Record], bounds: trace.Bounds) -> None:
    pipe = client.pipeline(transaction=True)
    trace.add(pipe, bounds, records)
    pipe.execute()


# --- records ----------------------------------------------------------------------------------


def test_an_arrival_counts_comments_and_case_data_fields_without_their_content() -> None:
    raw = case_event(
        "e1",
        CASE,
        source="urn:example:billing",
        comments=[{"description": SECRET_COMMENT}, {"description": "two"}],
        caseData={"iban": SECRET_VALUE, "amount": 1},
    )
    event = parse_event(json.dumps(raw), now=NOW)

    record = trace.arrived("1795860000000-1", event, NOW)

    assert record.subject == trace.Subject(CASE, "1795860000000-1", "urn:example:billing", "e1")
    assert json.loads(record.text()) == {
        "t": NOW,
        "step": "arrived",
        "entry": "1795860000000-1",
        "source": "urn:example:billing",
        "id": "e1",
        "eventTime": "2026-11-28T10:15:00Z",
        "comments": 2,
        "caseDataFields": 2,
    }
    assert SECRET_COMMENT not in record.text()
    assert SECRET_VALUE not in record.text()


def test_a_failed_attempt_names_the_status_the_error_class_and_the_exception_under_it() -> None:
    began = trace.Attempt(2, NOW)
    try:
        try:
            raise httpx.ReadTimeout("timed out")
        except httpx.ReadTimeout as exc:
            raise OutcomeUnknown("PUT /api/v4/cases/1: no answer") from exc
    except OutcomeUnknown as lost:
        unknown = began.failed(lost)

    assert unknown.fields() == {
        "attempt": 2,
        "at": NOW,
        "error": "OutcomeUnknown",
        "cause": "ReadTimeout",
    }
    busy = began.failed(TransientError("PUT: HTTP 503", http_status=503))
    assert busy.fields() == {"attempt": 2, "at": NOW, "httpStatus": 503, "error": "TransientError"}
    refused = began.failed(
        PermanentError(
            f"HTTP 400 invalidCaseField {SECRET_VALUE}",
            code="invalidCaseField",
            errors={"iban": SECRET_VALUE},
            http_status=400,
        )
    )
    assert refused.fields() == {
        "attempt": 2,
        "at": NOW,
        "httpStatus": 400,
        "error": "PermanentError",
        "code": "invalidCaseField",
    }, "the API's detail and errors object may quote caseData values: never kept"


def test_a_rescheduled_event_keeps_why_the_delay_and_its_failed_attempt() -> None:
    tried = trace.Attempt(1, NOW - 0.2, http_status=503, error="TransientError")

    retry = trace.rescheduled(subject(), NOW, why=trace.RETRY, delay=0.4567, tried=tried)
    busy = trace.rescheduled(subject(), NOW, why=trace.BUSY_CASE, delay=0.05)

    assert json.loads(retry.text()) == {
        "t": NOW,
        "step": "rescheduled",
        "entry": "1-0",
        "source": "urn:example:billing",
        "id": "e1",
        "why": "retry",
        "delay": 0.457,
        "tried": {"attempt": 1, "at": NOW - 0.2, "httpStatus": 503, "error": "TransientError"},
    }
    assert json.loads(busy.text())["why"] == "busyCase"
    assert "tried" not in json.loads(busy.text())


def test_an_outcome_keeps_its_reason_and_the_change_that_superseded_it() -> None:
    winner = order_key(parse_event(json.dumps(case_event("n", CASE)), now=NOW).time, "9-3")
    ended = Outcome(
        outcomes.SUPERSEDED,
        "e1",
        "urn:example:billing",
        CASE,
        attempts=1,
        http_status=201,
        detail=SECRET_VALUE,
        case={"comments": [{"description": SECRET_COMMENT}]},
    )

    record = trace.outcome(subject(), NOW, ended, superseded_by=winner)

    assert json.loads(record.text()) == {
        "t": NOW,
        "step": "outcome",
        "entry": "1-0",
        "source": "urn:example:billing",
        "id": "e1",
        "outcome": "superseded",
        "attempts": 1,
        "httpStatus": 201,
        "supersededBy": winner,
    }
    moment, entry = order_key_parts(winner)
    assert (moment.isoformat(), entry) == ("2026-11-28T10:15:00+00:00", "9-3")


def test_an_outcome_of_an_event_that_names_no_case_has_no_subject() -> None:
    unreadable = Outcome(outcomes.DEADLETTERED, None, None, None, 0, reason="invalidEvent")
    assert trace.subject_of(unreadable, "1-0") is None


# --- the writer -------------------------------------------------------------------------------


def test_records_go_to_the_case_list_newest_first_with_the_ttl(any_redis: redis.Redis) -> None:
    first = trace.rescheduled(subject(), NOW, why=trace.BREAKER, delay=5)
    second = trace.rescheduled(subject(), NOW + 1, why=trace.BUSY_CASE, delay=0.05)

    add(any_redis, [first, second], trace.Bounds(length=10, ttl=600))

    assert [record["t"] for record in stored(any_redis)] == [NOW, NOW + 1]
    assert json.loads(str(any_redis.lindex(trace.case_key(CASE), 0)))["t"] == NOW + 1
    assert 590 < any_redis.ttl(trace.case_key(CASE)) <= 600


def test_an_arrival_indexes_its_event_to_its_case_for_as_long(any_redis: redis.Redis) -> None:
    event = parse_event(json.dumps(case_event("e1", CASE, source="urn:a")), now=NOW)

    add(any_redis, [trace.arrived("1-0", event, NOW)], trace.Bounds(ttl=600))

    key = trace.event_key("urn:a", "e1")
    assert any_redis.get(key) == str(CASE)
    assert 590 < any_redis.ttl(key) <= 600


def test_a_case_keeps_only_the_newest_records(any_redis: redis.Redis) -> None:
    bounds = trace.Bounds(length=3, ttl=600)
    for n in range(5):
        add(any_redis, [trace.rescheduled(subject(), NOW + n, why="retry", delay=1)], bounds)

    assert [record["t"] for record in stored(any_redis)] == [NOW + 2, NOW + 3, NOW + 4]


def test_records_of_several_cases_go_to_each_case(any_redis: redis.Redis) -> None:
    other = trace.Subject(7, "2-0", "urn:a", "e2")
    records = [
        trace.rescheduled(subject(), NOW, why="retry", delay=1),
        trace.rescheduled(other, NOW, why="retry", delay=1),
    ]

    add(any_redis, records, trace.DEFAULT_BOUNDS)

    assert [r["id"] for r in stored(any_redis)] == ["e1"]
    assert [r["id"] for r in stored(any_redis, 7)] == ["e2"]


@pytest.mark.parametrize("records", [[], "one"], ids=["no-records", "length-0"])
def test_nothing_is_written_without_records_or_with_tracing_off(
    any_redis: redis.Redis, records: Any
) -> None:
    event = parse_event(json.dumps(case_event("e1", CASE)), now=NOW)
    written = [trace.arrived("1-0", event, NOW)] if records == "one" else []
    pipe = any_redis.pipeline(transaction=True)

    trace.add(pipe, trace.Bounds(length=0) if written else trace.DEFAULT_BOUNDS, written)

    assert len(pipe) == 0
    assert any_redis.keys("casesync:trace:*") == []
