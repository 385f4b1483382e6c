"""Applying batches of events through BatchApplier.apply, over Redis and a fake Thalamus.

Each test builds jobs as intake leaves them (leased in the schedule), applies a batch, and asserts
on what a user sees: outcome events on the results stream (contract §4), dead letters (§5), what
reached Thalamus, and what the schedule holds (a retried event waits in ``casesync:due`` with its
attempts; a finished one is gone from the jobs and the leases).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any

import httpx
import pytest
import redis
from pydantic import SecretStr

from core import outcomes as outcomes_module
from core.apply import CLOCK_MARGIN_MS
from core.guards import BreakerOpen, EventKeys, Guards, lock_key
from core.outcomes import iso_time
from core.retry_policy import RetryPolicy
from core.schedule import Job
from settings import keys
from tests.core.conftest import (
    LEASE,
    LEDGER_TTL,
    LOCK_TTL,
    MAX_DELIVERIES,
    POLICY,
    STREAMS,
    TOKEN,
    Clock,
    MakeRig,
    Rig,
    on_both_servers,
)
from tests.fake_thalamus import FakeThalamus
from thalamus.breaker import Breaker
from thalamus.client import LOGIN_PATH, ThalamusClient
from thalamus.errors import DOCUMENTED_CODES
from thalamus.session import RedisSessionCache
from thalamus.throttle import Throttle

CASE = 12345
OTHER_CASES = (201, 202, 203, 204)
SOURCE = "urn:example:billing"
T0 = "2026-11-28T10:15:00Z"
T1 = "2026-11-28T10:16:00Z"
T2 = "2026-11-28T10:17:00Z"
PASSWORD = "operator-password-SECRET"

# Every batch runs Lua (guards, schedule): each test runs on fakeredis and on the real server.
pytestmark = on_both_servers


def event(
    event_id: str = "e1",
    time: str = T0,
    replyto: str | None = None,
    case: int = CASE,
    **data: Any,
) -> str:
    """An event's JSON text; ``data`` adds to the codes (a value of ``...`` removes a key)."""
    body: dict[str, Any] = {
        "caseInstanceId": case,
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
        "subject": str(case),
        "data": {key: value for key, value in body.items() if value is not ...},
    }
    if replyto:
        document["replyto"] = replyto
    return json.dumps(document)


def comments_of(case: dict[str, Any]) -> list[tuple[int, str]]:
    return [(comment["id"], comment["description"]) for comment in case["comments"]]


def waiting(rig: Rig, job: Job) -> Job:
    """The job as it waits in the schedule: due, not leased, its state stored."""
    assert job.entry_id in rig.due(), f"{job.entry_id} is not due: {rig.due()}"
    assert job.entry_id not in rig.leased()
    stored = rig.stored(job.entry_id)
    assert stored is not None
    return stored


def assert_finished(rig: Rig, *jobs: Job) -> None:
    """Each job's entry is finished: no job left, neither leased nor due."""
    for job in jobs:
        assert rig.stored(job.entry_id) is None
        assert job.entry_id not in rig.leased()
        assert job.entry_id not in rig.due()


def hold_case(store: redis.Redis, event_id: str, entry_id: str, token: str) -> None:
    """Another task takes CASE for one of its events (its lock and the event's mark)."""
    guards = Guards(store, lock_ttl=LOCK_TTL, ledger_ttl=LEDGER_TTL)
    holds = guards.acquire([(CASE, [EventKeys.of(SOURCE, event_id, entry_id)])], token)
    assert not isinstance(holds, BreakerOpen)
    assert holds[0].held


def methods(thalamus: FakeThalamus) -> list[str]:
    return [request.method for request in thalamus.requests]


def case_paths(thalamus: FakeThalamus) -> set[str]:
    return {request.path for request in thalamus.requests}


@pytest.fixture
def thalamus(thalamus_fake: FakeThalamus) -> FakeThalamus:
    thalamus_fake.add_case(CASE, caseData={"amount": 10.0, "priority": "low"})
    for case_id in OTHER_CASES:
        thalamus_fake.add_case(case_id)
    return thalamus_fake


# --- one event ------------------------------------------------------------------------------


def test_an_applied_update_publishes_its_outcome_with_the_case(
    rig: Rig, thalamus: FakeThalamus, clock: Clock
) -> None:
    raw = event(status="In Progress", comments=[{"description": "Customer called back"}])
    [job] = rig.jobs(raw)

    report = rig.apply([job])

    assert report.counts == {"applied": 1}
    [outcome] = rig.outcomes()
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
    assert rig.dead_letters() == []
    assert_finished(rig, job)
    assert rig.locks() == []


def test_the_update_is_sent_with_the_touchpoint_headers_and_the_event_body(
    rig: Rig, thalamus: FakeThalamus
) -> None:
    raw = event(status="Resolved", resolution="Fixed", comments=[{"description": "done"}])

    rig.apply(rig.jobs(raw))

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


def test_the_outcome_also_goes_to_the_replyto_stream(rig: Rig, thalamus: FakeThalamus) -> None:
    rig.apply(rig.jobs(event(replyto="billing:case-results")))

    assert rig.outcomes("billing:case-results") == rig.outcomes()
    assert len(rig.outcomes()) == 1


@pytest.mark.parametrize("kind", ["hash", "list"])
def test_a_replyto_key_that_is_not_a_stream_does_not_hold_up_or_retry_the_outcome(
    rig: Rig, thalamus: FakeThalamus, kind: str
) -> None:
    if kind == "hash":
        rig.store.hset("billing:case-results", "field", "value")
    else:
        rig.store.rpush("billing:case-results", "message")
    jobs = rig.jobs(event(replyto="billing:case-results", comments=[{"description": "once"}]))

    rig.apply(jobs)

    assert [o["type"] for o in rig.outcomes()] == ["casesync.update.applied"]
    assert rig.store.type("billing:case-results") == kind
    assert rig.store.keys("casesync:lock:*") == []
    assert rig.take_due() == [], "nothing is retried"
    assert len(thalamus.sent("PUT")) == 1


def test_an_event_replying_to_the_task_queue_that_reaches_the_task_is_dead_lettered_there(
    rig: Rig, thalamus: FakeThalamus
) -> None:
    # Queued before intake refused such events: the task checks again, and writes nothing there.
    rig.apply(rig.jobs(event(replyto="casesync")))

    [outcome] = rig.outcomes()
    assert outcome["data"]["reason"] == "invalidEvent"
    assert "casesync, Celery or kombu uses" in outcome["data"]["detail"]
    assert thalamus.requests == []
    assert rig.store.exists("casesync") == 0


def test_an_event_from_the_future_reaching_the_task_is_dead_lettered_without_a_call(
    rig: Rig, thalamus: FakeThalamus, clock: Clock
) -> None:
    rig.apply(rig.jobs(event(time=iso_time(clock.now + 3600))))

    [outcome] = rig.outcomes()
    assert outcome["data"]["reason"] == "invalidEvent"
    assert "CASESYNC_MAX_CLOCK_SKEW" in outcome["data"]["detail"]
    assert thalamus.requests == []
    assert rig.store.keys("casesync:newest:*") == [], "it supersedes nothing"


def test_a_partial_case_data_is_completed_from_the_current_case(
    rig: Rig, thalamus: FakeThalamus
) -> None:
    rig.apply(rig.jobs(event(caseData={"amount": 120.5})))

    assert methods(thalamus) == ["GET", "PUT"]
    assert thalamus.sent("PUT")[0].body["caseData"] == {"amount": 120.5, "priority": "low"}
    assert thalamus.cases[CASE]["caseData"] == {"amount": 120.5, "priority": "low"}


# --- duplicates and order -------------------------------------------------------------------


def test_a_duplicate_event_is_reported_and_not_sent_again(rig: Rig, thalamus: FakeThalamus) -> None:
    raw = event(comments=[{"description": "once"}])
    rig.apply(rig.jobs(raw))

    [again] = rig.jobs(raw)
    rig.apply([again])

    assert len(thalamus.requests) == 1
    assert thalamus.comments(CASE) == ["once"]
    first, second = rig.outcomes()
    assert second["type"] == "casesync.update.duplicate"
    assert second["data"]["requestId"] == first["data"]["requestId"] == "e1"
    assert second["data"]["requestSource"] == SOURCE
    assert_finished(rig, again)


def test_the_same_event_twice_in_one_batch_is_applied_once_and_reported_duplicate_once(
    rig: Rig, thalamus: FakeThalamus
) -> None:
    raw = event(comments=[{"description": "once"}])
    jobs = rig.jobs(raw, raw)

    rig.apply(jobs)

    assert rig.outcome_types() == [("e1", "applied"), ("e1", "duplicate")]
    assert len(thalamus.sent("PUT")) == 1
    assert thalamus.comments(CASE) == ["once"]
    assert_finished(rig, *jobs)


def test_the_same_event_twice_in_one_batch_after_a_lost_answer_posts_its_comment_once(
    rig: Rig, thalamus: FakeThalamus
) -> None:
    thalamus.fail("PUT", raises=httpx.ReadTimeout, after_apply=True)
    raw = event(comments=[{"description": "once"}])
    first, second = rig.jobs(raw, raw)

    rig.apply([first, second])

    # The second copy reads the case first, finds the comment and does not send it again.
    assert methods(thalamus) == ["PUT", "GET"]
    assert rig.outcome_types() == [("e1", "applied")]
    waiting(rig, first)
    rig.apply(rig.take_due())
    assert rig.outcome_types() == [("e1", "applied"), ("e1", "duplicate")]
    assert thalamus.comments(CASE) == ["once"]
    assert_finished(rig, first, second)


def test_the_same_id_from_another_source_is_not_a_duplicate(
    rig: Rig, thalamus: FakeThalamus
) -> None:
    raw = event()
    other = json.dumps(json.loads(raw) | {"source": "urn:example:crm"})

    rig.apply(rig.jobs(raw, other))

    assert [o["type"] for o in rig.outcomes()] == ["casesync.update.applied"] * 2
    assert len(thalamus.sent("PUT")) == 2


def test_an_older_change_after_a_newer_one_sends_only_its_comments_with_current_codes(
    rig: Rig, thalamus: FakeThalamus
) -> None:
    newer = event("new", T1, categoryCode="Consulta", typeCode="Email", status="Resolved")
    older = event(
        "old",
        T0,
        status="In Progress",
        caseData={"amount": 1.0},
        comments=[{"description": "late note"}],
    )
    old_job, new_job = rig.jobs(older, newer)
    rig.apply([new_job])

    rig.apply([old_job])

    assert thalamus.sent("PUT")[-1].body == {
        "categoryCode": "Consulta",
        "typeCode": "Email",
        "comments": [{"description": "late note"}],
    }
    case = thalamus.cases[CASE]
    assert (case["status"], case["caseData"]["amount"]) == ("Resolved", 10.0)
    assert thalamus.comments(CASE) == ["late note"]
    outcome = rig.outcomes()[-1]
    assert outcome["type"] == "casesync.update.superseded"
    assert outcome["data"]["httpStatus"] == 201
    assert comments_of(outcome["data"]["case"]) == [(1, "late note")]


@pytest.mark.parametrize("case_data", [None, {"amount": 1.0}], ids=["plain", "with-caseData"])
def test_an_older_change_without_comments_makes_no_call_at_all(
    rig: Rig, thalamus: FakeThalamus, case_data: dict[str, Any] | None
) -> None:
    older = event("old", T0, status="In Progress", caseData=case_data if case_data else ...)
    old_job, new_job = rig.jobs(older, event("new", T1, status="Resolved"))
    rig.apply([new_job])
    calls = len(thalamus.requests)

    rig.apply([old_job])

    assert len(thalamus.requests) == calls
    assert thalamus.cases[CASE]["status"] == "Resolved"
    outcome = rig.outcomes()[-1]
    assert outcome["type"] == "casesync.update.superseded"
    assert "httpStatus" not in outcome["data"]
    assert "case" not in outcome["data"]
    assert_finished(rig, old_job)


@pytest.mark.parametrize(
    "comments", [[{"description": "late note"}], ...], ids=["comments", "none"]
)
def test_a_superseded_event_seen_again_is_a_duplicate(
    rig: Rig, thalamus: FakeThalamus, comments: Any
) -> None:
    older = event("old", T0, comments=comments)
    old_job, new_job = rig.jobs(older, event("new", T1))
    rig.apply([new_job])
    rig.apply([old_job])
    calls = len(thalamus.requests)

    rig.apply(rig.jobs(older))

    assert rig.outcome_types()[-2:] == [("old", "superseded"), ("old", "duplicate")]
    assert len(thalamus.requests) == calls
    assert thalamus.comments(CASE) == ([] if comments is ... else ["late note"])


def test_events_of_equal_time_are_ordered_by_stream_position(
    rig: Rig, thalamus: FakeThalamus
) -> None:
    earlier, later = rig.jobs(
        event("earlier-entry", T0, status="A"), event("later", T0, status="B")
    )
    rig.apply([later])

    rig.apply([earlier])

    assert rig.outcome_types() == [("later", "applied"), ("earlier-entry", "superseded")]
    assert thalamus.cases[CASE]["status"] == "B"


def test_a_newer_change_after_an_older_one_is_applied(rig: Rig, thalamus: FakeThalamus) -> None:
    rig.apply(rig.jobs(event("old", T0, status="A")))

    rig.apply(rig.jobs(event("new", T1, status="B")))

    assert rig.outcome_types() == [("old", "applied"), ("new", "applied")]
    assert thalamus.cases[CASE]["status"] == "B"


def test_events_of_one_case_in_a_batch_run_in_stream_order_and_the_newest_time_wins(
    rig: Rig, thalamus: FakeThalamus
) -> None:
    jobs = rig.jobs(
        event("first", T0, status="A", comments=[{"description": "one"}]),
        event("newest", T2, status="C", comments=[{"description": "two"}]),
        event("older", T1, status="B", comments=[{"description": "three"}]),
    )

    rig.apply(jobs)

    assert rig.outcome_types() == [
        ("first", "applied"),
        ("newest", "applied"),
        ("older", "superseded"),
    ]
    assert thalamus.cases[CASE]["status"] == "C"
    # Every event's comments are posted once, in stream order; the older one sends nothing else.
    assert thalamus.comments(CASE) == ["one", "two", "three"]
    assert "status" not in thalamus.sent("PUT")[-1].body
    assert_finished(rig, *jobs)


def test_a_later_batch_is_ordered_after_the_newest_change_of_an_earlier_one(
    rig: Rig, thalamus: FakeThalamus
) -> None:
    rig.apply(rig.jobs(event("a", T0, status="A"), event("c", T2, status="C")))

    rig.apply(rig.jobs(event("b", T1, status="B")))

    assert rig.outcome_types()[-1] == ("b", "superseded")
    assert thalamus.cases[CASE]["status"] == "C"


# --- several cases in one batch -------------------------------------------------------------


def test_a_batch_of_several_cases_applies_each_and_writes_each_outcome_once(
    rig: Rig, thalamus: FakeThalamus
) -> None:
    cases = (CASE, *OTHER_CASES)
    raws = [
        event(f"e{case}", case=case, status="In Progress", comments=[{"description": f"n{case}"}])
        for case in cases
    ]
    jobs = rig.jobs(*raws)

    report = rig.apply(jobs)

    assert Counter(rig.outcome_types()) == Counter((f"e{case}", "applied") for case in cases)
    for case in cases:
        assert thalamus.comments(case) == [f"n{case}"]
        assert thalamus.cases[case]["status"] == "In Progress"
    assert report.counts == {"applied": len(cases)}
    assert_finished(rig, *jobs)
    assert rig.locks() == []


def test_outcomes_of_a_case_are_written_without_waiting_for_a_slower_case(
    make_rig: MakeRig, thalamus: FakeThalamus, store: redis.Redis, clock: Clock
) -> None:
    clock.now = time.time()  # the applier runs on the real clock: it flushes as time passes
    slow = OTHER_CASES[0]
    written_first: list[bool] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith(f"/{slow}"):
            # The fast case's outcome must reach the results stream while this call is held.
            deadline = time.monotonic() + 1.0
            while not store.xlen(STREAMS.results) and time.monotonic() < deadline:
                time.sleep(0.005)
            written_first.append(bool(store.xlen(STREAMS.results)))
        return thalamus.handle(request)

    http = httpx.Client(base_url="http://thalamus.test", transport=httpx.MockTransport(handle))
    client = ThalamusClient(http, touchpoint="casesync-tests", token=SecretStr(TOKEN))
    rig = make_rig(thalamus=client, clock=time.time, flush_interval=0.01)
    try:
        rig.apply(rig.jobs(event("slow", case=slow), event("fast", case=CASE)))
    finally:
        http.close()

    assert written_first == [True]
    assert rig.outcome_types() == [("fast", "applied"), ("slow", "applied")]


def test_a_batch_report_names_each_dead_lettered_event_without_its_content(
    rig: Rig, thalamus: FakeThalamus
) -> None:
    thalamus.fail("PUT", status=400, body={"errors": {"status": "InvalidName"}}, case_id=CASE)
    jobs = rig.jobs(
        event("bad", status="???", comments=[{"description": "private words"}]),
        event("good", case=OTHER_CASES[0]),
    )

    report = rig.apply(jobs)

    assert report.counts == {"applied": 1, "deadlettered": 1}
    [line] = report.dead_lettered
    assert f"{SOURCE}/bad (entry {jobs[0].entry_id}): InvalidName" in line
    assert "private words" not in line


# --- a case another task holds --------------------------------------------------------------


def test_a_case_locked_by_another_task_waits_on_the_schedule_and_the_other_cases_are_applied(
    rig: Rig, thalamus: FakeThalamus, store: redis.Redis, clock: Clock
) -> None:
    hold_case(store, "x", "9-0", "other-task")
    started = clock.now - 30
    busy = rig.jobs(
        event("b1", comments=[{"description": "b1"}]),
        event("b2", T1),
        attempts=2,
        first_attempt_at=started,
    )
    [free] = rig.jobs(event("f1", case=OTHER_CASES[0]))

    rig.apply([*busy, free])

    assert rig.outcome_types() == [("f1", "applied")]
    assert case_paths(thalamus) == {f"/api/v4/cases/{OTHER_CASES[0]}"}
    for job in busy:
        # Due soon (jittered from busy_base), its wait counted, its budget untouched.
        assert 0.024 <= rig.due()[job.entry_id] - clock.now <= POLICY.busy_base
        stored = waiting(rig, job)
        assert (stored.attempts, stored.first_attempt_at, stored.waits) == (2, started, 1)
    assert store.get(lock_key(CASE)) == "other-task"
    assert_finished(rig, free)

    # Still busy: the next wait doubles.
    clock.advance(POLICY.busy_base)
    again = rig.take_due()
    assert {job.entry_id for job in again} == {job.entry_id for job in busy}
    rig.apply(again)
    for job in busy:
        assert 0.049 <= rig.due()[job.entry_id] - clock.now <= 2 * POLICY.busy_base
        assert waiting(rig, job).waits == 2

    store.delete(lock_key(CASE))  # the other task is done with the case
    clock.advance(2 * POLICY.busy_base)
    rig.apply(rig.take_due())

    assert rig.outcome_types()[1:] == [("b1", "applied"), ("b2", "applied")]
    assert [o["data"]["attempts"] for o in rig.outcomes()[1:]] == [3, 3]
    assert thalamus.comments(CASE) == ["b1"]
    assert_finished(rig, *busy)


def test_a_task_whose_case_locks_redis_has_not_confirmed_lately_sends_nothing_more(
    make_rig: MakeRig, thalamus: FakeThalamus, clock: Clock
) -> None:
    # Redis stops answering the lease keeper while a case's events are being sent: after half
    # the lock's time to live, the lock may be gone to another task, so the rest must wait.
    class RenewalsFailFromNowOn:
        def before_call(self) -> None:
            pass

        def after_call(self, status: int | None, retry_after: float | None) -> None:
            clock.advance(LOCK_TTL)

    rig = make_rig(client_options={"hooks": [RenewalsFailFromNowOn()]})
    jobs = rig.jobs(*(event(f"e{n}", f"2026-11-28T10:1{n}:00Z", status="Open") for n in range(3)))

    rig.apply(jobs)

    assert len(thalamus.sent("PUT")) == 1
    assert rig.outcome_types() == [("e0", "applied")]
    assert set(rig.due()) == {job.entry_id for job in jobs[1:]}
    assert [waiting(rig, job).attempts for job in jobs[1:]] == [0, 0], "no budget spent"


def test_the_events_of_a_busy_case_wait_together_and_come_back_as_one_batch(
    rig: Rig, thalamus: FakeThalamus, store: redis.Redis, clock: Clock
) -> None:
    # A flood of one case: however many events wait, they take the case again as one group.
    hold_case(store, "x", "9-0", "other-task")
    flood = rig.jobs(*(event(f"f{n}", comments=[{"description": f"f{n}"}]) for n in range(20)))

    rig.apply(flood)

    assert len({rig.due()[job.entry_id] for job in flood}) == 1, "one due time for the group"
    store.delete(lock_key(CASE))
    clock.advance(POLICY.busy_base)
    [batch] = [rig.take_due()]
    assert [job.entry_id for job in batch] == [job.entry_id for job in flood]
    rig.apply(batch)
    assert thalamus.comments(CASE) == [f"f{n}" for n in range(20)]


def test_an_entry_finished_meanwhile_is_not_put_back_while_its_case_is_busy(
    rig: Rig, thalamus: FakeThalamus, store: redis.Redis
) -> None:
    [job] = rig.jobs(event())
    rig.apply([job])
    hold_case(store, "x", "9-0", "other-task")

    report = rig.apply([job])  # the same task delivered twice, while another holds the case

    assert report.counts == {"alreadyDone": 1}
    assert rig.outcome_types() == [("e1", "applied")]
    assert_finished(rig, job)


# --- the circuit breaker --------------------------------------------------------------------


def test_an_open_breaker_sends_the_whole_batch_back_to_wait_without_a_call(
    rig: Rig, thalamus: FakeThalamus, store: redis.Redis, clock: Clock
) -> None:
    store.set(keys.BREAKER_OPEN, "5 calls in a row failed")
    jobs = rig.jobs(
        event("a"), event("b", case=OTHER_CASES[0]), attempts=2, first_attempt_at=clock.now - 9
    )

    report = rig.apply(jobs)

    assert report.counts == {"retrying": 2}
    assert thalamus.requests == []
    assert rig.due() == {job.entry_id: clock.now + POLICY.breaker_wait for job in jobs}
    assert [waiting(rig, job) for job in jobs] == jobs
    assert rig.outcomes() == []
    assert rig.locks() == []
    assert store.keys(f"{keys.ATTEMPT_MARK}:*") == []


def test_when_the_breaker_trips_during_a_batch_the_rest_waits_without_spending_budget(
    make_rig: MakeRig, thalamus: FakeThalamus, store: redis.Redis, clock: Clock
) -> None:
    breaker = Breaker(store, threshold=1, probe_interval=5.0)
    rig = make_rig(client_options={"hooks": [breaker]}, breaker_tripped=breaker.tripped)
    thalamus.fail("PUT", status=503)
    failed, held_back = rig.jobs(event("e1"), event("e2", T1))

    rig.apply([failed, held_back])

    assert "HTTP 503" in str(store.get(keys.BREAKER_OPEN))
    assert methods(thalamus) == ["PUT"]
    assert waiting(rig, failed).attempts == 1
    assert waiting(rig, held_back).attempts == 0
    assert rig.due()[held_back.entry_id] == clock.now + POLICY.breaker_wait
    assert rig.outcomes() == []
    assert rig.locks() == []


# --- permanent failures ---------------------------------------------------------------------


def test_a_permanent_error_is_dead_lettered_at_once_with_the_original_event(
    rig: Rig, thalamus: FakeThalamus, clock: Clock
) -> None:
    raw = event(caseData={"colour": "red"}, comments=[{"description": "x"}])
    [job] = rig.jobs(raw)

    rig.apply([job])

    assert len(thalamus.sent("PUT")) == 1
    [letter] = rig.dead_letters()
    assert letter["event"] == raw
    assert letter["reason"] == "invalidCaseField"
    assert "invalidCaseField" in letter["detail"]
    assert json.loads(letter["errors"]) == {"caseData": "invalidCaseField"}
    assert letter["httpStatus"] == "400"
    assert letter["attempts"] == "1"
    assert letter["firstAttemptAt"] == letter["deadLetteredAt"] == iso_time(clock.now)
    assert (letter["requestId"], letter["requestSource"]) == ("e1", SOURCE)
    assert letter["caseInstanceId"] == str(CASE)
    assert letter["entryId"] == job.entry_id
    [outcome] = rig.outcomes()
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
    assert_finished(rig, job)
    assert rig.locks() == []


@pytest.mark.parametrize("code", [*DOCUMENTED_CODES, "somethingNew"])
def test_each_400_code_is_dead_lettered_at_once_under_that_code(
    rig: Rig, thalamus: FakeThalamus, code: str
) -> None:
    thalamus.fail("PUT", status=400, body={"errors": {"someField": code}})
    [job] = rig.jobs(event())

    rig.apply([job])

    assert len(thalamus.requests) == 1
    [letter] = rig.dead_letters()
    assert (letter["reason"], letter["httpStatus"], letter["attempts"]) == (code, "400", "1")
    assert json.loads(letter["errors"]) == {"someField": code}
    assert rig.outcome_types() == [("e1", "deadlettered")]
    assert_finished(rig, job)


def test_a_dead_lettered_event_replayed_later_is_processed_anew(
    rig: Rig, thalamus: FakeThalamus
) -> None:
    raw = event(caseData={"colour": "red"})
    rig.apply(rig.jobs(raw))
    thalamus.cases[CASE]["caseData"]["colour"] = "blue"  # the case type gained the field

    rig.apply(rig.jobs(raw))

    assert rig.outcome_types() == [("e1", "deadlettered"), ("e1", "applied")]
    assert thalamus.cases[CASE]["caseData"]["colour"] == "red"


def test_a_dead_letter_records_when_the_first_attempt_was(
    rig: Rig, thalamus: FakeThalamus, clock: Clock
) -> None:
    first = clock.now
    thalamus.fail("PUT", status=503)
    rig.apply(rig.jobs(event()))
    clock.advance(120)
    thalamus.fail("PUT", status=400, body={"errors": {"categoryCode": "InvalidCode"}})

    rig.apply(rig.take_due())

    [letter] = rig.dead_letters()
    assert letter["reason"] == "InvalidCode"
    assert letter["firstAttemptAt"] == iso_time(first)
    assert letter["deadLetteredAt"] == iso_time(first + 120)
    assert letter["attempts"] == "2"


def test_an_invalid_event_reaching_the_task_is_dead_lettered_without_a_call(
    rig: Rig, thalamus: FakeThalamus
) -> None:
    raw = event(typeCode="")
    invalid, valid = rig.jobs(raw, event("e2", case=OTHER_CASES[0]))

    rig.apply([invalid, valid])

    assert case_paths(thalamus) == {f"/api/v4/cases/{OTHER_CASES[0]}"}
    [letter] = rig.dead_letters()
    assert letter["event"] == raw
    assert (letter["reason"], letter["requestId"]) == ("CodeRequired", "e1")
    assert letter["entryId"] == invalid.entry_id
    assert Counter(rig.outcome_types()) == Counter([("e1", "deadlettered"), ("e2", "applied")])
    assert_finished(rig, invalid, valid)


# --- transient failures and the budget ------------------------------------------------------


def test_a_transient_error_waits_on_the_schedule_honouring_retry_after_and_is_then_applied(
    rig: Rig, thalamus: FakeThalamus, clock: Clock
) -> None:
    thalamus.fail("PUT", status=503, headers={"Retry-After": "7"})
    [job] = rig.jobs(event(comments=[{"description": "hello"}]))

    report = rig.apply([job])

    assert report.counts == {"retrying": 1}
    assert 7.0 <= rig.due()[job.entry_id] - clock.now <= POLICY.max_delay
    stored = waiting(rig, job)
    assert (stored.attempts, stored.first_attempt_at) == (1, clock.now)
    assert rig.outcomes() == []
    assert rig.locks() == []

    rig.apply(rig.take_due())

    [outcome] = rig.outcomes()
    assert (outcome["type"], outcome["data"]["attempts"]) == ("casesync.update.applied", 2)
    assert thalamus.comments(CASE) == ["hello"]
    assert_finished(rig, job)


def test_a_retry_after_holds_back_the_rest_of_the_batch_without_spending_its_budget(
    make_rig: MakeRig, thalamus: FakeThalamus, store: redis.Redis, clock: Clock
) -> None:
    rig = make_rig(client_options={"hooks": [Throttle(store, max_rps=0)]})
    thalamus.fail("PUT", status=429, headers={"Retry-After": "30"})
    told, held_back = rig.jobs(event("e1"), event("e2", T1))

    rig.apply([told, held_back])

    assert methods(thalamus) == ["PUT"]
    assert 30 <= rig.due()[told.entry_id] - clock.now <= POLICY.max_delay
    assert waiting(rig, told).attempts == 1
    # Held back before sending, for what is left of the pause every worker shares.
    assert 29 <= rig.due()[held_back.entry_id] - clock.now <= 30
    assert waiting(rig, held_back).attempts == 0
    assert rig.outcomes() == []


@pytest.mark.parametrize(
    "failure",
    [
        *({"status": status} for status in (408, 429, 500, 502, 503, 504)),
        {"raises": httpx.ConnectError},
        {"raises": httpx.ReadTimeout},
    ],
    ids=["408", "429", "500", "502", "503", "504", "connect-error", "read-timeout"],
)
def test_each_transient_failure_is_retried_with_growing_jittered_backoff(
    rig: Rig, thalamus: FakeThalamus, clock: Clock, failure: dict[str, Any]
) -> None:
    thalamus.fail("PUT", times=2, **failure)
    [job] = rig.jobs(event())

    rig.apply([job])
    assert 0 <= rig.due()[job.entry_id] - clock.now <= POLICY.base_delay
    assert waiting(rig, job).attempts == 1
    rig.apply(rig.take_due())
    assert 0 <= rig.due()[job.entry_id] - clock.now <= 2 * POLICY.base_delay
    assert waiting(rig, job).attempts == 2
    assert rig.outcomes() == []

    rig.apply(rig.take_due())

    assert [(o["type"], o["data"]["attempts"]) for o in rig.outcomes()] == [
        ("casesync.update.applied", 3)
    ]
    assert rig.dead_letters() == []


def test_when_the_retry_budget_is_spent_the_event_is_dead_lettered_as_retries_exhausted(
    rig: Rig, thalamus: FakeThalamus
) -> None:
    thalamus.fail("PUT", status=502, times=100)
    [job] = rig.jobs(event())

    rig.run_to_end([job])

    assert len(thalamus.sent("PUT")) == POLICY.max_attempts == 3
    [letter] = rig.dead_letters()
    assert (letter["reason"], letter["attempts"], letter["httpStatus"]) == (
        "retriesExhausted",
        "3",
        "502",
    )
    assert "HTTP 502" in letter["detail"]
    assert_finished(rig, job)


def test_failures_to_read_the_case_spend_the_retry_budget_too(
    rig: Rig, thalamus: FakeThalamus
) -> None:
    thalamus.fail("GET", status=500, times=100)

    rig.run_to_end(rig.jobs(event(caseData={"amount": 1.0})))

    [letter] = rig.dead_letters()
    assert letter["reason"] == "retriesExhausted"
    assert len(thalamus.sent("GET")) == 3
    assert thalamus.sent("PUT") == []


def test_an_event_is_not_retried_past_the_max_age(
    make_rig: MakeRig, thalamus: FakeThalamus
) -> None:
    policy = RetryPolicy(max_attempts=100, max_age=10.0, base_delay=4.0, max_delay=4.0)
    rig = make_rig(policy=policy)
    thalamus.fail("PUT", status=503, times=100)

    rig.run_to_end(rig.jobs(event()))

    [letter] = rig.dead_letters()
    assert letter["reason"] == "retriesExhausted"
    assert "CASESYNC_MAX_EVENT_AGE" in letter["detail"]
    assert len(thalamus.sent("PUT")) < 100


def test_a_failed_call_counts_as_one_attempt(
    rig: Rig, thalamus: FakeThalamus, clock: Clock
) -> None:
    thalamus.fail("GET", status=503)
    [job] = rig.jobs(event(caseData={"amount": 1.0}), attempts=1, first_attempt_at=clock.now)

    rig.apply([job])

    assert waiting(rig, job).attempts == 2
    assert methods(thalamus) == ["GET"]


# --- sessions -------------------------------------------------------------------------------


def test_an_expired_session_is_renewed_by_one_login_without_spending_an_attempt(
    make_rig: MakeRig, thalamus: FakeThalamus, store: redis.Redis
) -> None:
    thalamus.require_login("operator@example.com", PASSWORD)
    rig = make_rig(
        client_options={
            "principal": "operator@example.com",
            "password": SecretStr(PASSWORD),
            "sessions": RedisSessionCache(store),
        }
    )
    rig.apply(rig.jobs(event("e1")))
    thalamus.end_sessions()

    rig.apply(rig.jobs(event("e2", T1, comments=[{"description": "after renewal"}])))

    case = f"/api/v4/cases/{CASE}"
    assert [(r.method, r.path) for r in thalamus.requests] == [
        ("POST", LOGIN_PATH),
        ("PUT", case),
        ("PUT", case),  # 401: the session ended
        ("POST", LOGIN_PATH),
        ("PUT", case),
    ]
    assert [(o["type"], o["data"]["attempts"]) for o in rig.outcomes()] == [
        ("casesync.update.applied", 1),
        ("casesync.update.applied", 1),
    ]
    assert thalamus.comments(CASE) == ["after renewal"]
    text = json.dumps([store.xrange(STREAMS.results), store.xrange(STREAMS.dead_letter)])
    assert PASSWORD not in text


@pytest.mark.parametrize("refusal", ["token", "login"])
def test_a_session_refused_after_renewal_opens_the_breaker_and_waits_without_spending_budget(
    make_rig: MakeRig, thalamus: FakeThalamus, store: redis.Redis, clock: Clock, refusal: str
) -> None:
    breaker = Breaker(store, threshold=5, probe_interval=5.0)
    options: dict[str, Any] = {}
    if refusal == "token":
        thalamus.token = "rotated"
    else:
        thalamus.require_login("operator@example.com", "the-new-password")
        options = {"principal": "operator@example.com", "password": SecretStr(PASSWORD)}
    rig = make_rig(client_options=options, on_session_refused=breaker.open)
    [job] = rig.jobs(event(), attempts=2, first_attempt_at=clock.now - 60)

    rig.apply([job])

    assert waiting(rig, job).attempts == 2
    assert rig.due()[job.entry_id] == clock.now + POLICY.max_delay / 10
    assert rig.outcomes() == []
    assert rig.dead_letters() == []
    # `casesync status` shows why intake stopped.
    assert "refused" in str(store.get(keys.BREAKER_OPEN))
    assert len(thalamus.sent("PUT")) == (1 if refusal == "token" else 0)


def test_no_token_or_password_appears_in_outcomes_or_dead_letters(
    make_rig: MakeRig, thalamus: FakeThalamus, store: redis.Redis
) -> None:
    rig = make_rig(client_options={"principal": "op", "password": SecretStr(PASSWORD)})
    thalamus.require_login("op", PASSWORD)
    rig.apply(rig.jobs(event("ok")))
    thalamus.fail("PUT", status=400, body={"errors": {"status": "InvalidName"}})
    rig.apply(rig.jobs(event("bad")))
    thalamus.fail("PUT", status=503, times=100)
    rig.run_to_end(rig.jobs(event("down", replyto="r:s")))
    thalamus.token = "rotated"
    rig.apply(rig.jobs(event("refused")))

    everything: Any = [
        store.xrange(stream) for stream in (STREAMS.results, STREAMS.dead_letter, "r:s")
    ]
    text = json.dumps(everything)
    assert len(rig.dead_letters()) == 2
    assert TOKEN not in text
    assert PASSWORD not in text
    assert "SECRET" not in text


# --- lost answers and killed workers ---------------------------------------------------------


def test_a_lost_answer_is_checked_by_reading_the_case_and_reported_applied_without_resending(
    rig: Rig, thalamus: FakeThalamus
) -> None:
    thalamus.fail("PUT", raises=httpx.ReadTimeout, after_apply=True)
    [job] = rig.jobs(event(status="Resolved", comments=[{"description": "only once"}]))

    rig.apply([job])
    assert waiting(rig, job).attempts == 1
    rig.apply(rig.take_due())

    assert methods(thalamus) == ["PUT", "GET"]
    assert thalamus.comments(CASE) == ["only once"]
    [outcome] = rig.outcomes()
    assert outcome["type"] == "casesync.update.applied"
    assert comments_of(outcome["data"]["case"]) == [(1, "only once")]
    assert_finished(rig, job)


def test_a_landed_update_whose_answer_was_lost_wins_over_an_older_change_applied_meanwhile(
    rig: Rig, thalamus: FakeThalamus
) -> None:
    # The newer change lands but its answer is lost, so its order key is never written; an older
    # change of the case then applies its state. When the newer one is tried again, its comment
    # is found on the case: it must not be posted again, but its state must win.
    thalamus.fail("PUT", raises=httpx.ReadTimeout, after_apply=True)
    [newer] = rig.jobs(event("new", T1, status="Resolved", comments=[{"description": "fixed"}]))
    rig.apply([newer])
    assert thalamus.cases[CASE]["status"] == "Resolved"
    rig.apply(rig.jobs(event("old", T0, status="Open")))
    assert thalamus.cases[CASE]["status"] == "Open"

    rig.apply(rig.take_due())

    assert thalamus.cases[CASE]["status"] == "Resolved"
    assert thalamus.comments(CASE) == ["fixed"]
    assert [body.get("comments") for body in (r.body for r in thalamus.sent("PUT"))][-1] is None
    assert rig.outcome_types() == [("old", "applied"), ("new", "applied")]


def test_a_lost_answer_for_an_update_that_did_not_land_is_sent_again(
    rig: Rig, thalamus: FakeThalamus
) -> None:
    thalamus.fail("PUT", raises=httpx.ReadTimeout)

    rig.run_to_end(rig.jobs(event(comments=[{"description": "only once"}])))

    assert rig.outcome_types() == [("e1", "applied")]
    assert methods(thalamus) == ["PUT", "GET", "PUT"]
    assert thalamus.comments(CASE) == ["only once"]


def test_a_lost_answer_is_not_taken_for_landed_by_an_older_comment_of_the_same_text(
    rig: Rig, thalamus: FakeThalamus, store: redis.Redis
) -> None:
    seconds, micros = store.time()
    long_ago = seconds * 1000 + micros // 1000 - CLOCK_MARGIN_MS - 60_000
    thalamus.cases[CASE]["comments"].append(
        {"id": 50, "description": "only once", "creationDate": long_ago}
    )
    thalamus.fail("PUT", raises=httpx.ReadTimeout)  # did not land

    rig.run_to_end(rig.jobs(event(comments=[{"description": "only once"}])))

    assert rig.outcome_types() == [("e1", "applied")]
    assert methods(thalamus) == ["PUT", "GET", "PUT"]
    assert thalamus.comments(CASE) == ["only once", "only once"]


def test_a_lost_answer_is_recognised_by_comment_text_wherever_the_comment_sits(
    rig: Rig, thalamus: FakeThalamus
) -> None:
    thalamus.fail("PUT", raises=httpx.ReadTimeout, after_apply=True)
    rig.apply(rig.jobs(event(comments=[{"description": "a"}, {"description": "b"}])))
    # Others commented in the meantime; the event's own comments are no longer the last ones.
    thalamus.cases[CASE]["comments"].insert(0, {"id": 40, "description": "before"})
    thalamus.cases[CASE]["comments"].append({"id": 41, "description": "after"})

    rig.apply(rig.take_due())

    assert rig.outcome_types() == [("e1", "applied")]
    assert methods(thalamus) == ["PUT", "GET"]
    assert thalamus.comments(CASE) == ["before", "a", "b", "after"]


def kill_mid_put(rig: Rig, thalamus: FakeThalamus, job: Job, *, landed: bool) -> Job:
    """A task took the job's case and sent its PUT (which ``landed`` or not), then its worker
    was killed: the case lock and the lease run out and the schedule hands the entry on again.
    The job as intake hands it on."""
    document = json.loads(job.raw_event)
    hold_case(rig.store, document["id"], job.entry_id, "killed")
    if landed:
        for comment in document["data"].get("comments", []):
            thalamus.cases[CASE]["comments"].append({"id": 99, **comment})
    rig.store.delete(lock_key(CASE))  # its lock ran out
    rig.clock.advance(LEASE + 1)
    [again] = rig.take_due()
    assert again.entry_id == job.entry_id
    return again


def test_after_a_worker_is_killed_mid_put_a_landed_update_is_reported_applied_not_resent(
    rig: Rig, thalamus: FakeThalamus
) -> None:
    [job] = rig.jobs(event(comments=[{"description": "a"}, {"description": "b"}]))
    again = kill_mid_put(rig, thalamus, job, landed=True)

    rig.apply([again])

    assert rig.outcome_types() == [("e1", "applied")]
    assert thalamus.sent("PUT") == []
    assert thalamus.comments(CASE) == ["a", "b"]
    assert_finished(rig, job)


def test_after_a_worker_is_killed_mid_put_an_update_that_did_not_land_is_sent_once(
    rig: Rig, thalamus: FakeThalamus
) -> None:
    [job] = rig.jobs(event(comments=[{"description": "a"}]))
    again = kill_mid_put(rig, thalamus, job, landed=False)

    rig.apply([again])

    assert rig.outcome_types() == [("e1", "applied")]
    assert len(thalamus.sent("PUT")) == 1
    assert thalamus.comments(CASE) == ["a"]


def test_an_event_that_killed_its_workers_max_deliveries_times_is_a_poison_event(
    rig: Rig, thalamus: FakeThalamus
) -> None:
    raw = event(comments=[{"description": "a"}])
    [job] = rig.jobs(raw)
    for _ in range(MAX_DELIVERIES):
        job = kill_mid_put(rig, thalamus, job, landed=False)
    assert job.lost == MAX_DELIVERIES

    rig.apply([job])

    assert thalamus.requests == []
    [letter] = rig.dead_letters()
    assert letter["reason"] == "poisonEvent"
    assert "CASESYNC_MAX_DELIVERIES" in letter["detail"]
    assert letter["event"] == raw
    assert rig.outcome_types() == [("e1", "deadlettered")]
    assert_finished(rig, job)
    assert rig.store.hget(keys.LOST, job.entry_id) is None


def test_an_event_that_killed_fewer_workers_is_still_applied(
    rig: Rig, thalamus: FakeThalamus
) -> None:
    [job] = rig.jobs(event(comments=[{"description": "a"}]))
    for _ in range(MAX_DELIVERIES - 1):
        job = kill_mid_put(rig, thalamus, job, landed=False)

    rig.apply([job])

    assert rig.outcome_types() == [("e1", "applied")]
    assert thalamus.comments(CASE) == ["a"]


def test_a_poison_event_is_dead_lettered_and_the_other_events_of_the_batch_are_applied(
    rig: Rig, thalamus: FakeThalamus
) -> None:
    poison = rig.jobs(event("p", comments=[{"description": "p"}]), lost=MAX_DELIVERIES)
    others = rig.jobs(event("ok", case=OTHER_CASES[0]), event("ok2", case=OTHER_CASES[1]))

    rig.apply([*poison, *others])

    assert Counter(rig.outcome_types()) == Counter(
        [("p", "deadlettered"), ("ok", "applied"), ("ok2", "applied")]
    )
    assert [letter["reason"] for letter in rig.dead_letters()] == ["poisonEvent"]
    assert thalamus.comments(CASE) == []
    assert case_paths(thalamus) == {f"/api/v4/cases/{case}" for case in OTHER_CASES[:2]}
    assert_finished(rig, *poison, *others)


# --- entries finished already, faults of casesync's own --------------------------------------


def test_an_entry_delivered_again_after_its_outcome_writes_nothing_a_second_time(
    rig: Rig, thalamus: FakeThalamus, store: redis.Redis
) -> None:
    [job] = rig.jobs(event(comments=[{"description": "once"}]))
    rig.apply([job])
    calls = len(thalamus.requests)

    report = rig.apply([job])  # the same task delivered twice

    assert report.counts == {"alreadyDone": 1}
    assert len(thalamus.requests) == calls
    assert thalamus.comments(CASE) == ["once"]
    assert rig.outcome_types() == [("e1", "applied")]
    assert_finished(rig, job)
    assert rig.locks() == []
    assert store.keys(f"{keys.ATTEMPT_MARK}:*") == []


def test_each_outcome_releases_the_case_lock(rig: Rig, thalamus: FakeThalamus) -> None:
    thalamus.fail("PUT", status=400, body={"errors": {"status": "InvalidName"}})
    rig.apply(rig.jobs(event("bad")))
    thalamus.fail("PUT", status=503)
    slow = rig.jobs(event("slow", T1))
    rig.apply(slow)

    rig.apply(rig.jobs(event("good", T2)))

    assert rig.outcome_types() == [("bad", "deadlettered"), ("good", "applied")]
    assert list(rig.due()) == [slow[0].entry_id]
    assert rig.locks() == []


def test_an_unexpected_error_for_one_event_retries_only_that_event_reading_its_case_first(
    rig: Rig, thalamus: FakeThalamus, clock: Clock
) -> None:
    buggy_case = OTHER_CASES[0]
    thalamus.fail("PUT", raises=RuntimeError, case_id=buggy_case)
    jobs = rig.jobs(
        event("ok1"),
        event("bug", case=buggy_case, comments=[{"description": "x"}]),
        event("ok3", case=OTHER_CASES[1]),
    )

    rig.apply(jobs)

    assert Counter(rig.outcome_types()) == Counter([("ok1", "applied"), ("ok3", "applied")])
    assert list(rig.due()) == [jobs[1].entry_id]
    assert 0 <= rig.due()[jobs[1].entry_id] - clock.now <= POLICY.base_delay
    assert waiting(rig, jobs[1]).attempts == 1
    assert rig.locks() == []
    assert_finished(rig, jobs[0], jobs[2])

    rig.apply(rig.take_due())

    assert rig.outcome_types()[-1] == ("bug", "applied")
    assert rig.outcomes()[-1]["data"]["attempts"] == 2
    buggy = f"/api/v4/cases/{buggy_case}"
    # Whether the failed PUT took effect is unknown: the case is read before sending again.
    assert [r.method for r in thalamus.requests if r.path == buggy] == ["PUT", "GET", "PUT"]
    assert thalamus.comments(buggy_case) == ["x"]


def test_an_event_that_always_hits_a_bug_ends_as_retries_exhausted_naming_it(
    rig: Rig, thalamus: FakeThalamus
) -> None:
    thalamus.fail("PUT", raises=RuntimeError, times=100)
    [job] = rig.jobs(event())

    rig.run_to_end([job])

    [letter] = rig.dead_letters()
    assert (letter["reason"], letter["attempts"]) == ("retriesExhausted", "3")
    assert "RuntimeError" in letter["detail"]
    assert_finished(rig, job)


class RedisDownOnce:
    """A call hook (like the shared rate cap) whose first call finds Redis unreachable."""

    def __init__(self) -> None:
        self.failed = False

    def before_call(self) -> None:
        if not self.failed:
            self.failed = True
            raise redis.ConnectionError("Redis went away")

    def after_call(self, status: int | None, retry_after: float | None) -> None:
        pass


def test_a_redis_failure_under_a_call_hook_makes_the_event_wait_without_spending_budget(
    make_rig: MakeRig, thalamus: FakeThalamus, clock: Clock
) -> None:
    rig = make_rig(client_options={"hooks": [RedisDownOnce()]})
    [job] = rig.jobs(event(comments=[{"description": "x"}]))

    rig.apply([job])

    assert thalamus.requests == []
    assert rig.due() == {job.entry_id: clock.now + POLICY.fault_wait}
    assert waiting(rig, job).attempts == 0
    assert rig.locks() == []

    rig.apply(rig.take_due())

    assert [(o["type"], o["data"]["attempts"]) for o in rig.outcomes()] == [
        ("casesync.update.applied", 1)
    ]
    assert thalamus.comments(CASE) == ["x"]


def test_a_redis_error_while_writing_outcomes_gives_the_case_back_and_keeps_the_mark(
    rig: Rig, thalamus: FakeThalamus, store: redis.Redis, clock: Clock
) -> None:
    raw = event(comments=[{"description": "only once"}])
    [job] = rig.jobs(raw)
    ek = EventKeys.of(SOURCE, "e1", job.entry_id)

    def unreachable(*args: Any, **kwargs: Any) -> None:
        raise redis.ConnectionError("Redis went away")

    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(outcomes_module, "add_outcome", unreachable)
        with pytest.raises(redis.ConnectionError):
            rig.apply([job])

    # The case is free again, the entry waits fault_wait, unchanged; nothing was written.
    assert rig.locks() == []
    assert rig.due() == {job.entry_id: clock.now + POLICY.fault_wait}
    assert waiting(rig, job) == job
    assert store.exists(ek.ledger) == 0
    assert rig.outcomes() == []
    # The mark stays: the PUT went out, so the next task reads the case first.
    assert store.exists(ek.mark) == 1

    rig.apply(rig.take_due())

    assert rig.outcome_types() == [("e1", "applied")]
    assert methods(thalamus) == ["PUT", "GET"]
    assert thalamus.comments(CASE) == ["only once"]
    assert_finished(rig, job)


def test_a_redis_error_writing_one_case_does_not_free_a_case_whose_put_is_still_out(
    make_rig: MakeRig, thalamus: FakeThalamus, clock: Clock
) -> None:
    clock.now = time.time()  # the applier runs on the real clock: it flushes as time passes
    slow = OTHER_CASES[0]
    put_may_land = threading.Event()
    slow_puts: list[int] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT" and request.url.path.endswith(f"/{slow}"):
            slow_puts.append(1)
            if len(slow_puts) == 1:  # the first PUT of the slow case takes its time
                put_may_land.wait(0.2)
        return thalamus.handle(request)

    http = httpx.Client(base_url="http://thalamus.test", transport=httpx.MockTransport(handle))
    client = ThalamusClient(http, touchpoint="casesync-tests", token=SecretStr(TOKEN))
    rig = make_rig(thalamus=client, clock=time.time, flush_interval=0.01)
    first_write = [True]
    add_outcome = outcomes_module.add_outcome

    def fails_once(*args: Any, **kwargs: Any) -> list[outcomes_module.Reply]:
        if first_write.pop() if first_write else False:
            raise redis.ConnectionError("Redis went away")
        return add_outcome(*args, **kwargs)

    try:
        jobs = rig.jobs(event("slow", case=slow, comments=[{"description": "once"}]), event("fast"))
        with pytest.MonkeyPatch.context() as patched:
            patched.setattr(outcomes_module, "add_outcome", fails_once)
            with pytest.raises(redis.ConnectionError):
                rig.apply(jobs)  # the fast case's write fails while the slow PUT is out

            # The next task, once the given-back entries are due.
            taken = rig.schedule.take_due(time.time() + POLICY.fault_wait + 1, 10)
            rig.apply(taken.jobs)
            put_may_land.set()
    finally:
        put_may_land.set()
        rig.executor.shutdown(wait=True)  # what still ran for the first task ends
        http.close()

    assert thalamus.comments(slow) == ["once"]


def test_while_a_batch_runs_its_leases_and_case_locks_are_renewed_and_not_after(
    make_rig: MakeRig, thalamus: FakeThalamus, store: redis.Redis, clock: Clock
) -> None:
    seen: list[tuple[float, int]] = []
    rig: Rig

    class RenewMidCall:
        """Stands in for the keeper's thread firing while the PUT is out, an hour later."""

        def before_call(self) -> None:
            clock.advance(3600)
            store.pexpire(lock_key(CASE), 1000)
            rig.keeper.renew_now()
            score: Any = store.zscore(keys.LEASES, job.entry_id)
            seen.append((score / 1000, int(store.pttl(lock_key(CASE)))))

        def after_call(self, status: int | None, retry_after: float | None) -> None:
            pass

    rig = make_rig(client_options={"hooks": [RenewMidCall()]})
    [job] = rig.jobs(event())

    rig.apply([job])

    [(lease_until, lock_ms)] = seen
    assert lease_until == clock.now + LEASE
    assert LOCK_TTL * 1000 - 2000 < lock_ms <= LOCK_TTL * 1000
    rig.keeper.renew_now()
    assert rig.leased() == []
    assert rig.locks() == []
