"""Applying one event end to end through EventApplier.apply, over fakeredis and a fake Thalamus.

Each test asserts on what a user sees: outcome events on the results stream (contract §4),
dead letters (§5), and the requests that reached Thalamus.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis

from settings import keys
from tasks import outcomes as outcomes_module
from tasks.apply import (
    CLOCK_MARGIN_MS,
    LOCK_RETRY_DELAY,
    EventApplier,
    Finished,
    Job,
    Result,
    RetryLater,
)
from tasks.guards import EventKeys, Guards, Held
from tasks.outcomes import iso_time
from tasks.retry_policy import RetryPolicy
from tests.fake_thalamus import FakeThalamus
from tests.tasks.conftest import STREAMS, TOKEN, Clock

CASE = 12345
SOURCE = "urn:example:billing"
T0 = "2026-11-28T10:15:00Z"
T1 = "2026-11-28T10:16:00Z"

MakeApplier = Callable[..., EventApplier]


def event(event_id: str = "e1", time: str = T0, replyto: str | None = None, **data: Any) -> str:
    """An event's JSON text; ``data`` adds to the codes (a value of ``...`` removes a key)."""
    body: dict[str, Any] = {
        "caseInstanceId": CASE,
        "categoryCode": "Reclamo",
        "typeCode": "Telefonico",
        **data,
    }
    document: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id,
        "source": SOURCE,
        "type": "thalamus.case.update",
        "time": time,
        "subject": str(CASE),
        "data": {key: value for key, value in body.items() if value is not ...},
    }
    if replyto:
        document["replyto"] = replyto
    return json.dumps(document)


def outcomes_on(client: redis.Redis, stream: str = STREAMS.results) -> list[dict[str, Any]]:
    entries: Any = client.xrange(stream)
    return [json.loads(fields["event"]) for _, fields in entries]


def dead_letters(client: redis.Redis) -> list[dict[str, str]]:
    entries: Any = client.xrange(STREAMS.dead_letter)
    return [fields for _, fields in entries]


def comments_of(case: dict[str, Any]) -> list[tuple[int, str]]:
    return [(comment["id"], comment["description"]) for comment in case["comments"]]


def finished(result: Result) -> Finished:
    assert isinstance(result, Finished), result
    return result


def retry_later(result: Result) -> RetryLater:
    assert isinstance(result, RetryLater), result
    return result


def run_to_end(applier: EventApplier, job: Job, clock: Clock, most: int = 20) -> Finished:
    """Apply, carrying out each RetryLater as the task would, until the event has an outcome."""
    for _ in range(most):
        result = applier.apply(job)
        if isinstance(result, Finished):
            return result
        clock.advance(result.delay)
        job = result.job
    raise AssertionError(f"no outcome after {most} attempts; last job {job}")


@pytest.fixture
def thalamus(thalamus_fake: FakeThalamus) -> FakeThalamus:
    thalamus_fake.add_case(CASE, caseData={"amount": 10.0, "priority": "low"})
    return thalamus_fake


@pytest.fixture
def applier(make_applier: MakeApplier) -> EventApplier:
    return make_applier()


def test_an_applied_update_publishes_its_outcome_with_the_case(
    applier: EventApplier, thalamus: FakeThalamus, fake_redis: redis.Redis, clock: Clock
) -> None:
    raw = event(status="In Progress", comments=[{"description": "Customer called back"}])

    result = finished(applier.apply(Job(raw, "1-0")))

    assert result.outcome.type == "casesync.update.applied"
    [outcome] = outcomes_on(fake_redis)
    assert outcome["specversion"] == "1.0"
    assert outcome["type"] == "casesync.update.applied"
    assert outcome["source"] == "casesync"
    assert outcome["subject"] == str(CASE)
    assert outcome["time"] == iso_time(clock.now)
    data = outcome["data"]
    case = data.pop("case")
    assert data == {
        "requestId": "e1",
        "requestSource": SOURCE,
        "caseInstanceId": CASE,
        "attempts": 1,
        "httpStatus": 201,
    }
    # The case as the API returned it (comments may gain keys the model defaults).
    assert {key: value for key, value in case.items() if key != "comments"} == {
        key: value for key, value in thalamus.cases[CASE].items() if key != "comments"
    }
    assert comments_of(case) == [(1, "Customer called back")]
    assert thalamus.cases[CASE]["status"] == "In Progress"
    assert dead_letters(fake_redis) == []


def test_the_update_is_sent_with_the_touchpoint_headers_and_the_event_body(
    applier: EventApplier, thalamus: FakeThalamus
) -> None:
    raw = event(status="Resolved", resolution="Fixed", comments=[{"description": "done"}])

    finished(applier.apply(Job(raw, "1-0")))

    [put] = thalamus.sent("PUT")
    assert put.path == f"/api/v4/cases/{CASE}"
    assert put.headers["thalamus-token"] == TOKEN
    assert put.headers["thalamus-touchpoint"] == "casesync-tests"
    assert put.body == {
        "categoryCode": "Reclamo",
        "typeCode": "Telefonico",
        "status": "Resolved",
        "resolution": "Fixed",
        "comments": [{"description": "done"}],
    }


def test_the_outcome_also_goes_to_the_replyto_stream(
    applier: EventApplier, thalamus: FakeThalamus, fake_redis: redis.Redis
) -> None:
    finished(applier.apply(Job(event(replyto="billing:case-results"), "1-0")))

    assert outcomes_on(fake_redis, "billing:case-results") == outcomes_on(fake_redis)
    assert len(outcomes_on(fake_redis)) == 1


@pytest.mark.parametrize("kind", ["hash", "list"])
def test_a_replyto_key_that_is_not_a_stream_does_not_hold_up_or_retry_the_outcome(
    applier: EventApplier, thalamus: FakeThalamus, fake_redis: redis.Redis, kind: str
) -> None:
    if kind == "hash":
        fake_redis.hset("billing:case-results", "field", "value")
    else:
        fake_redis.rpush("billing:case-results", "message")
    raw = event(replyto="billing:case-results", comments=[{"description": "once"}])

    result = finished(applier.apply(Job(raw, "1-0")))

    assert result.outcome is not None
    assert result.outcome.type == "casesync.update.applied"
    assert [o["data"]["requestId"] for o in outcomes_on(fake_redis)] == ["e1"]
    assert fake_redis.type("billing:case-results") == kind
    assert fake_redis.keys("casesync:lock:*") == []
    assert len(thalamus.sent("PUT")) == 1


def test_a_partial_case_data_is_completed_from_the_current_case(
    applier: EventApplier, thalamus: FakeThalamus
) -> None:
    finished(applier.apply(Job(event(caseData={"amount": 120.5}), "1-0")))

    assert [request.method for request in thalamus.requests] == ["GET", "PUT"]
    assert thalamus.sent("PUT")[0].body["caseData"] == {"amount": 120.5, "priority": "low"}
    assert thalamus.cases[CASE]["caseData"] == {"amount": 120.5, "priority": "low"}


def test_a_duplicate_event_is_reported_and_not_sent_again(
    applier: EventApplier, thalamus: FakeThalamus, fake_redis: redis.Redis
) -> None:
    raw = event(comments=[{"description": "once"}])
    finished(applier.apply(Job(raw, "1-0")))

    again = finished(applier.apply(Job(raw, "2-0")))

    assert again.outcome.type == "casesync.update.duplicate"
    assert len(thalamus.requests) == 1
    assert thalamus.comments(CASE) == ["once"]
    first, second = outcomes_on(fake_redis)
    assert second["type"] == "casesync.update.duplicate"
    assert second["data"]["requestId"] == first["data"]["requestId"] == "e1"
    assert second["data"]["requestSource"] == SOURCE


def test_the_same_id_from_another_source_is_not_a_duplicate(
    applier: EventApplier, thalamus: FakeThalamus
) -> None:
    raw = event()
    other = json.dumps(json.loads(raw) | {"source": "urn:example:crm"})
    finished(applier.apply(Job(raw, "1-0")))

    assert finished(applier.apply(Job(other, "2-0"))).outcome.type == "casesync.update.applied"
    assert len(thalamus.sent("PUT")) == 2


def test_an_older_change_after_a_newer_one_sends_only_its_comments_with_current_codes(
    applier: EventApplier, thalamus: FakeThalamus, fake_redis: redis.Redis
) -> None:
    newer = event("new", T1, categoryCode="Consulta", typeCode="Email", status="Resolved")
    older = event(
        "old",
        T0,
        status="In Progress",
        caseData={"amount": 1.0},
        comments=[{"description": "late note"}],
    )
    finished(applier.apply(Job(newer, "2-0")))

    result = finished(applier.apply(Job(older, "1-0")))

    assert result.outcome.type == "casesync.update.superseded"
    assert thalamus.sent("PUT")[-1].body == {
        "categoryCode": "Consulta",
        "typeCode": "Email",
        "comments": [{"description": "late note"}],
    }
    case = thalamus.cases[CASE]
    assert (case["status"], case["caseData"]["amount"]) == ("Resolved", 10.0)
    assert thalamus.comments(CASE) == ["late note"]
    outcome = outcomes_on(fake_redis)[-1]
    assert outcome["type"] == "casesync.update.superseded"
    assert outcome["data"]["httpStatus"] == 201
    assert comments_of(outcome["data"]["case"]) == [(1, "late note")]


@pytest.mark.parametrize("case_data", [None, {"amount": 1.0}], ids=["plain", "with-caseData"])
def test_an_older_change_without_comments_makes_no_call_at_all(
    applier: EventApplier,
    thalamus: FakeThalamus,
    fake_redis: redis.Redis,
    case_data: dict[str, Any] | None,
) -> None:
    finished(applier.apply(Job(event("new", T1, status="Resolved"), "2-0")))
    calls = len(thalamus.requests)
    older = event("old", T0, status="In Progress", caseData=case_data if case_data else ...)

    result = finished(applier.apply(Job(older, "1-0")))

    assert result.outcome.type == "casesync.update.superseded"
    assert len(thalamus.requests) == calls
    assert thalamus.cases[CASE]["status"] == "Resolved"
    data = outcomes_on(fake_redis)[-1]["data"]
    assert "httpStatus" not in data
    assert "case" not in data


def test_a_superseded_event_seen_again_is_a_duplicate(
    applier: EventApplier, thalamus: FakeThalamus
) -> None:
    finished(applier.apply(Job(event("new", T1), "2-0")))
    older = event("old", T0, comments=[{"description": "late note"}])
    finished(applier.apply(Job(older, "1-0")))

    again = finished(applier.apply(Job(older, "3-0")))

    assert again.outcome.type == "casesync.update.duplicate"
    assert thalamus.comments(CASE) == ["late note"]


def test_events_of_equal_time_are_ordered_by_stream_position(
    applier: EventApplier, thalamus: FakeThalamus
) -> None:
    finished(applier.apply(Job(event("later-entry", T0, status="B"), "1795860900000-1")))

    result = finished(applier.apply(Job(event("earlier-entry", T0, status="A"), "1795860900000-0")))

    assert result.outcome.type == "casesync.update.superseded"
    assert thalamus.cases[CASE]["status"] == "B"


def test_a_newer_change_after_an_older_one_is_applied(
    applier: EventApplier, thalamus: FakeThalamus
) -> None:
    finished(applier.apply(Job(event("old", T0, status="A"), "1-0")))

    result = finished(applier.apply(Job(event("new", T1, status="B"), "2-0")))

    assert result.outcome.type == "casesync.update.applied"
    assert thalamus.cases[CASE]["status"] == "B"


def test_a_permanent_error_is_dead_lettered_at_once_with_the_original_event(
    applier: EventApplier, thalamus: FakeThalamus, fake_redis: redis.Redis, clock: Clock
) -> None:
    raw = event(caseData={"colour": "red"}, comments=[{"description": "x"}])

    result = finished(applier.apply(Job(raw, "7-0")))

    assert result.outcome.type == "casesync.update.deadlettered"
    assert len(thalamus.sent("PUT")) == 1
    [letter] = dead_letters(fake_redis)
    assert letter["event"] == raw
    assert letter["reason"] == "invalidCaseField"
    assert "invalidCaseField" in letter["detail"]
    assert json.loads(letter["errors"]) == {"caseData": "invalidCaseField"}
    assert letter["httpStatus"] == "400"
    assert letter["attempts"] == "1"
    assert letter["firstAttemptAt"] == letter["deadLetteredAt"] == iso_time(clock.now)
    assert (letter["requestId"], letter["requestSource"]) == ("e1", SOURCE)
    assert letter["caseInstanceId"] == str(CASE)
    assert letter["entryId"] == "7-0"
    [outcome] = outcomes_on(fake_redis)
    assert outcome["type"] == "casesync.update.deadlettered"
    assert outcome["data"] | {"detail": "-"} == {
        "requestId": "e1",
        "requestSource": SOURCE,
        "caseInstanceId": CASE,
        "attempts": 1,
        "httpStatus": 400,
        "reason": "invalidCaseField",
        "detail": "-",
        "errors": {"caseData": "invalidCaseField"},
    }


def test_a_dead_lettered_event_replayed_later_is_processed_anew(
    applier: EventApplier, thalamus: FakeThalamus
) -> None:
    raw = event(caseData={"colour": "red"})
    finished(applier.apply(Job(raw, "7-0")))
    thalamus.cases[CASE]["caseData"]["colour"] = "blue"  # the case type gained the field

    replayed = finished(applier.apply(Job(raw, "8-0")))

    assert replayed.outcome.type == "casesync.update.applied"
    assert thalamus.cases[CASE]["caseData"]["colour"] == "red"


def test_a_dead_letter_records_when_the_first_attempt_was(
    applier: EventApplier, thalamus: FakeThalamus, fake_redis: redis.Redis, clock: Clock
) -> None:
    first = clock.now
    thalamus.fail("PUT", status=503)
    later = retry_later(applier.apply(Job(event(), "1-0")))
    clock.advance(120)
    thalamus.fail("PUT", status=400, body={"errors": {"categoryCode": "InvalidCode"}})

    finished(applier.apply(later.job))

    [letter] = dead_letters(fake_redis)
    assert letter["reason"] == "InvalidCode"
    assert letter["firstAttemptAt"] == iso_time(first)
    assert letter["deadLetteredAt"] == iso_time(first + 120)
    assert letter["attempts"] == "2"


def test_a_transient_error_is_retried_later_and_then_applied(
    applier: EventApplier, thalamus: FakeThalamus, fake_redis: redis.Redis, clock: Clock
) -> None:
    thalamus.fail("PUT", status=503, headers={"Retry-After": "7"})
    job = Job(event(comments=[{"description": "hello"}]), "1-0")

    later = retry_later(applier.apply(job))

    assert 7.0 <= later.delay <= 60.0
    assert later.job.attempts == 1
    assert later.job.first_attempt_at == clock.now
    assert outcomes_on(fake_redis) == []
    clock.advance(later.delay)
    result = finished(applier.apply(later.job))
    assert result.outcome.type == "casesync.update.applied"
    [outcome] = outcomes_on(fake_redis)
    assert outcome["data"]["attempts"] == 2
    assert thalamus.comments(CASE) == ["hello"]


def test_when_the_retry_budget_is_spent_the_event_is_dead_lettered_as_retries_exhausted(
    applier: EventApplier, thalamus: FakeThalamus, fake_redis: redis.Redis, clock: Clock
) -> None:
    thalamus.fail("PUT", status=502, times=100)

    result = run_to_end(applier, Job(event(), "1-0"), clock)

    assert result.outcome.reason == "retriesExhausted"
    assert len(thalamus.sent("PUT")) == 3
    [letter] = dead_letters(fake_redis)
    assert (letter["reason"], letter["attempts"], letter["httpStatus"]) == (
        "retriesExhausted",
        "3",
        "502",
    )
    assert "HTTP 502" in letter["detail"]


def test_failures_to_read_the_case_spend_the_retry_budget_too(
    applier: EventApplier, thalamus: FakeThalamus, fake_redis: redis.Redis, clock: Clock
) -> None:
    thalamus.fail("GET", status=500, times=100)

    result = run_to_end(applier, Job(event(caseData={"amount": 1.0}), "1-0"), clock)

    assert result.outcome.reason == "retriesExhausted"
    assert len(thalamus.sent("GET")) == 3
    assert thalamus.sent("PUT") == []


def test_an_event_is_not_retried_past_the_max_age(
    make_applier: MakeApplier, thalamus: FakeThalamus, clock: Clock
) -> None:
    policy = RetryPolicy(max_attempts=100, max_age=10.0, base_delay=4.0, max_delay=4.0)
    applier = make_applier(policy=policy)
    thalamus.fail("PUT", status=503, times=100)

    result = run_to_end(applier, Job(event(), "1-0"), clock, most=50)

    assert result.outcome.reason == "retriesExhausted"
    assert result.outcome.detail is not None
    assert "CASESYNC_MAX_EVENT_AGE" in result.outcome.detail


def test_a_case_locked_by_another_worker_is_retried_soon_without_spending_budget(
    applier: EventApplier, thalamus: FakeThalamus, fake_redis: redis.Redis
) -> None:
    other = Guards(fake_redis, lock_ttl=30.0, ledger_ttl=3600.0, done_ttl=3600)
    locked = other.acquire(EventKeys.of(SOURCE, "another", CASE, "9-0"), "other-worker")
    assert isinstance(locked, Held), locked
    job = Job(event(), "1-0", attempts=2, first_attempt_at=1.0)

    later = retry_later(applier.apply(job))

    # Jittered so that waiting workers do not all come back at once.
    assert LOCK_RETRY_DELAY <= later.delay < 2 * LOCK_RETRY_DELAY
    assert later.job == job
    assert thalamus.requests == []
    assert outcomes_on(fake_redis) == []


def test_a_refused_session_is_retried_without_spending_budget(
    applier: EventApplier, thalamus: FakeThalamus, fake_redis: redis.Redis
) -> None:
    thalamus.token = "rotated"
    job = Job(event(), "1-0", attempts=2, first_attempt_at=1.0)

    later = retry_later(applier.apply(job))

    assert later.job.attempts == 2
    assert outcomes_on(fake_redis) == []


def test_a_lost_answer_is_checked_by_reading_the_case_and_reported_applied_without_resending(
    applier: EventApplier, thalamus: FakeThalamus, fake_redis: redis.Redis, clock: Clock
) -> None:
    thalamus.fail("PUT", raises=httpx.ReadTimeout, after_apply=True)
    job = Job(event(status="Resolved", comments=[{"description": "only once"}]), "1-0")

    later = retry_later(applier.apply(job))
    clock.advance(later.delay)
    result = finished(applier.apply(later.job))

    assert result.outcome.type == "casesync.update.applied"
    assert [request.method for request in thalamus.requests] == ["PUT", "GET"]
    assert thalamus.comments(CASE) == ["only once"]
    [outcome] = outcomes_on(fake_redis)
    assert comments_of(outcome["data"]["case"]) == [(1, "only once")]


def test_a_lost_answer_for_an_update_that_did_not_land_is_sent_again(
    applier: EventApplier, thalamus: FakeThalamus, clock: Clock
) -> None:
    thalamus.fail("PUT", raises=httpx.ReadTimeout)
    job = Job(event(comments=[{"description": "only once"}]), "1-0")

    result = run_to_end(applier, job, clock)

    assert result.outcome.type == "casesync.update.applied"
    assert [request.method for request in thalamus.requests] == ["PUT", "GET", "PUT"]
    assert thalamus.comments(CASE) == ["only once"]


def kill_mid_put(
    fake_redis: redis.Redis, thalamus: FakeThalamus, raw: str, *, landed: bool
) -> None:
    """A worker took the lock, sent the PUT (which ``landed`` or not) and was killed."""
    document = json.loads(raw)
    ek = EventKeys.of(document["source"], document["id"], CASE, "9-9")
    guards = Guards(fake_redis, lock_ttl=30.0, ledger_ttl=3600.0, done_ttl=3600)
    assert isinstance(guards.acquire(ek, "killed"), Held)
    fake_redis.delete(ek.lock)  # its lock expired
    if landed:
        for comment in document["data"].get("comments", []):
            thalamus.cases[CASE]["comments"].append({"id": 99, **comment})


def test_after_a_worker_is_killed_mid_put_a_landed_update_is_reported_applied_not_resent(
    applier: EventApplier, thalamus: FakeThalamus, fake_redis: redis.Redis
) -> None:
    raw = event(comments=[{"description": "a"}, {"description": "b"}])
    kill_mid_put(fake_redis, thalamus, raw, landed=True)

    result = finished(applier.apply(Job(raw, "1-0")))

    assert result.outcome.type == "casesync.update.applied"
    assert thalamus.sent("PUT") == []
    assert thalamus.comments(CASE) == ["a", "b"]


def test_after_a_worker_is_killed_mid_put_an_update_that_did_not_land_is_sent_once(
    applier: EventApplier, thalamus: FakeThalamus, fake_redis: redis.Redis
) -> None:
    raw = event(comments=[{"description": "a"}])
    kill_mid_put(fake_redis, thalamus, raw, landed=False)

    result = finished(applier.apply(Job(raw, "1-0")))

    assert result.outcome.type == "casesync.update.applied"
    assert len(thalamus.sent("PUT")) == 1
    assert thalamus.comments(CASE) == ["a"]


def test_an_event_that_killed_its_workers_max_deliveries_times_is_a_poison_event(
    applier: EventApplier, thalamus: FakeThalamus, fake_redis: redis.Redis
) -> None:
    raw = event(comments=[{"description": "a"}])
    for _ in range(3):  # max_deliveries
        kill_mid_put(fake_redis, thalamus, raw, landed=False)

    result = finished(applier.apply(Job(raw, "1-0")))

    assert result.outcome.reason == "poisonEvent"
    assert thalamus.requests == []
    [letter] = dead_letters(fake_redis)
    assert letter["reason"] == "poisonEvent"
    assert "CASESYNC_MAX_DELIVERIES" in letter["detail"]
    assert letter["event"] == raw


def test_an_event_that_killed_fewer_workers_is_still_applied(
    applier: EventApplier, thalamus: FakeThalamus, fake_redis: redis.Redis
) -> None:
    raw = event(comments=[{"description": "a"}])
    for _ in range(2):
        kill_mid_put(fake_redis, thalamus, raw, landed=False)

    assert finished(applier.apply(Job(raw, "1-0"))).outcome.type == "casesync.update.applied"


def test_an_invalid_event_reaching_the_task_is_dead_lettered_without_a_call(
    applier: EventApplier, thalamus: FakeThalamus, fake_redis: redis.Redis
) -> None:
    raw = event(typeCode="")

    result = finished(applier.apply(Job(raw, "1-0")))

    assert result.outcome.reason == "CodeRequired"
    assert thalamus.requests == []
    [letter] = dead_letters(fake_redis)
    assert letter["event"] == raw
    assert letter["requestId"] == "e1"


def test_an_event_replying_to_the_task_queue_that_reaches_the_task_is_dead_lettered_there(
    applier: EventApplier, thalamus: FakeThalamus, fake_redis: redis.Redis
) -> None:
    # Queued before intake refused such events: the task checks again, and writes nothing there.
    raw = event(replyto="casesync")

    result = finished(applier.apply(Job(raw, "1-0")))

    assert result.outcome is not None
    assert result.outcome.reason == "invalidEvent"
    assert "casesync, Celery or kombu uses" in (result.outcome.detail or "")
    assert thalamus.requests == []
    assert fake_redis.exists("casesync") == 0
    assert len(outcomes_on(fake_redis)) == 1


def test_an_event_from_the_future_reaching_the_task_is_dead_lettered_without_a_call(
    applier: EventApplier, thalamus: FakeThalamus, fake_redis: redis.Redis, clock: Clock
) -> None:
    raw = event(time=iso_time(clock.now + 3600))

    result = finished(applier.apply(Job(raw, "1-0")))

    assert result.outcome is not None
    assert result.outcome.reason == "invalidEvent"
    assert "CASESYNC_MAX_CLOCK_SKEW" in (result.outcome.detail or "")
    assert thalamus.requests == []
    assert fake_redis.keys("casesync:newest:*") == [], "it supersedes nothing"


def test_each_outcome_releases_the_case_lock(
    applier: EventApplier, thalamus: FakeThalamus, fake_redis: redis.Redis
) -> None:
    thalamus.fail("PUT", status=400, body={"errors": {"status": "InvalidName"}})
    finished(applier.apply(Job(event("bad"), "1-0")))
    thalamus.fail("PUT", status=503)
    retry_later(applier.apply(Job(event("slow"), "2-0")))

    assert finished(applier.apply(Job(event("good"), "3-0"))).outcome.type.endswith("applied")
    assert fake_redis.keys("casesync:lock:*") == []


def test_no_token_appears_in_outcomes_or_dead_letters(
    applier: EventApplier, thalamus: FakeThalamus, fake_redis: redis.Redis, clock: Clock
) -> None:
    finished(applier.apply(Job(event("ok"), "1-0")))
    thalamus.fail("PUT", status=400, body={"errors": {"status": "InvalidName"}})
    finished(applier.apply(Job(event("bad"), "2-0")))
    thalamus.fail("PUT", status=503, times=100)
    run_to_end(applier, Job(event("down", replyto="r:s"), "3-0"), clock)
    thalamus.token = "rotated"
    retry_later(applier.apply(Job(event("refused"), "4-0")))

    everything: Any = [
        fake_redis.xrange(stream) for stream in (STREAMS.results, STREAMS.dead_letter, "r:s")
    ]
    text = json.dumps(everything)
    assert len(dead_letters(fake_redis)) == 2
    assert TOKEN not in text
    assert "SECRET" not in text


def test_an_entry_delivered_again_after_its_outcome_ends_without_a_second_outcome(
    applier: EventApplier, thalamus: FakeThalamus, fake_redis: redis.Redis
) -> None:
    raw = event(comments=[{"description": "once"}])
    finished(applier.apply(Job(raw, "1-0")))
    calls = len(thalamus.requests)

    again = finished(applier.apply(Job(raw, "1-0")))

    assert again.outcome is None
    assert len(thalamus.requests) == calls
    assert thalamus.comments(CASE) == ["once"]
    assert [outcome["type"] for outcome in outcomes_on(fake_redis)] == ["casesync.update.applied"]
    assert fake_redis.keys("casesync:lock:*") == []


def test_an_open_breaker_holds_the_event_without_a_call_or_spending_budget(
    make_applier: MakeApplier, thalamus: FakeThalamus, fake_redis: redis.Redis
) -> None:
    applier = make_applier(breaker_wait=4.5)
    fake_redis.set(keys.BREAKER_OPEN, "5 calls in a row failed")
    job = Job(event(), "1-0", attempts=2, first_attempt_at=1.0)

    later = retry_later(applier.apply(job))

    assert later.delay == 4.5
    assert later.job == job
    assert thalamus.requests == []
    assert outcomes_on(fake_redis) == []
    assert fake_redis.keys("casesync:lock:*") == []


def test_a_failed_call_counts_as_one_attempt(
    applier: EventApplier, thalamus: FakeThalamus, clock: Clock
) -> None:
    thalamus.fail("GET", status=503)

    later = retry_later(applier.apply(Job(event(caseData={"amount": 1.0}), "1-0", attempts=1)))

    assert later.job.attempts == 2
    assert [request.method for request in thalamus.requests] == ["GET"]


def test_a_lost_answer_is_not_taken_for_landed_by_an_older_comment_of_the_same_text(
    applier: EventApplier, thalamus: FakeThalamus, fake_redis: redis.Redis, clock: Clock
) -> None:
    seconds, micros = fake_redis.time()
    long_ago = seconds * 1000 + micros // 1000 - CLOCK_MARGIN_MS - 60_000
    thalamus.cases[CASE]["comments"].append(
        {"id": 50, "description": "only once", "creationDate": long_ago}
    )
    thalamus.fail("PUT", raises=httpx.ReadTimeout)  # did not land
    job = Job(event(comments=[{"description": "only once"}]), "1-0")

    result = run_to_end(applier, job, clock)

    assert result.outcome.type == "casesync.update.applied"
    assert [request.method for request in thalamus.requests] == ["PUT", "GET", "PUT"]
    assert thalamus.comments(CASE) == ["only once", "only once"]


def test_a_lost_answer_is_recognised_by_comment_text_wherever_the_comment_sits(
    applier: EventApplier, thalamus: FakeThalamus, fake_redis: redis.Redis, clock: Clock
) -> None:
    thalamus.fail("PUT", raises=httpx.ReadTimeout, after_apply=True)
    job = Job(event(comments=[{"description": "a"}, {"description": "b"}]), "1-0")
    later = retry_later(applier.apply(job))
    # Others commented in the meantime; the event's own comments are no longer the last ones.
    thalamus.cases[CASE]["comments"].insert(0, {"id": 40, "description": "before"})
    thalamus.cases[CASE]["comments"].append({"id": 41, "description": "after"})

    result = finished(applier.apply(later.job))

    assert result.outcome.type == "casesync.update.applied"
    assert [request.method for request in thalamus.requests] == ["PUT", "GET"]
    assert thalamus.comments(CASE) == ["before", "a", "b", "after"]


def test_a_redis_error_while_finishing_releases_the_lock_and_keeps_the_mark(
    applier: EventApplier,
    thalamus: FakeThalamus,
    fake_redis: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raw = event(comments=[{"description": "only once"}])
    ek = EventKeys.of(SOURCE, "e1", CASE, "1-0")

    def unreachable(*args: Any, **kwargs: Any) -> None:
        raise redis.ConnectionError("Redis went away")

    with monkeypatch.context() as patched:
        patched.setattr(outcomes_module, "add_outcome", unreachable)
        with pytest.raises(redis.ConnectionError):
            applier.apply(Job(raw, "1-0"))

    assert fake_redis.exists(ek.lock, ek.entry_done, ek.ledger) == 0
    # Kept as it was when the attempt began: no death counted, the result unknown.
    assert str(fake_redis.get(ek.mark)).startswith("0:")
    assert outcomes_on(fake_redis) == []
    # The redelivered task reads the case, finds the update landed and does not send it again.
    result = finished(applier.apply(Job(raw, "1-0")))
    assert result.outcome.type == "casesync.update.applied"
    assert [request.method for request in thalamus.requests] == ["PUT", "GET"]
    assert thalamus.comments(CASE) == ["only once"]
