"""The applier records each event's steps in its case's trace, in the MULTI of its outcome.

Each test applies batches with the rigs of ``conftest.py`` and reads what the case's trace holds
in Redis afterwards (on fakeredis and the real server).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import redis

from core import outcomes as outcomes_module
from core import trace
from core.guards import order_key_parts
from settings import keys
from tests.core.conftest import POLICY, Clock, MakeRig, Rig, on_both_servers
from tests.core.test_apply import CASE, SOURCE, T1, event, hold_case
from tests.fake_thalamus import FakeThalamus

pytestmark = on_both_servers

SECRET_COMMENT = "customer's card ends 4242"


@pytest.fixture
def thalamus(thalamus_fake: FakeThalamus) -> FakeThalamus:
    thalamus_fake.add_case(CASE, caseData={"amount": 10.0, "priority": "low"})
    return thalamus_fake


def records(store: redis.Redis, case_id: int = CASE) -> list[dict[str, Any]]:
    """The case's trace as stored, oldest first."""
    texts: Any = store.lrange(trace.case_key(case_id), 0, -1)
    return [json.loads(text) for text in reversed(texts)]


def steps(store: redis.Redis) -> list[tuple[str | None, ...]]:
    """(id, step, why or outcome) of each record."""
    return [(r["id"], r["step"], r.get("why") or r.get("outcome")) for r in records(store)]


def test_an_applied_event_records_its_outcome_and_the_attempt_that_made_it(
    rig: Rig, thalamus: FakeThalamus, clock: Clock
) -> None:
    [job] = rig.jobs(event(comments=[{"description": SECRET_COMMENT}], caseData={"amount": 2}))

    rig.apply([job])

    [record] = records(rig.store)
    assert record == {
        "t": clock.now,
        "step": "outcome",
        "entry": job.entry_id,
        "source": SOURCE,
        "id": "e1",
        "outcome": "applied",
        "attempts": 1,
        "httpStatus": 201,
        "tried": {"attempt": 1, "at": clock.now, "httpStatus": 201},
    }
    assert 0 < rig.store.ttl(trace.case_key(CASE)) <= trace.DEFAULT_BOUNDS.ttl
    text = json.dumps(rig.store.lrange(trace.case_key(CASE), 0, -1))
    assert SECRET_COMMENT not in text
    assert "amount" not in text


def test_a_retried_event_records_each_attempt_its_status_and_the_delay_chosen(
    rig: Rig, thalamus: FakeThalamus, clock: Clock
) -> None:
    thalamus.fail("PUT", status=503, headers={"Retry-After": "7"})
    [job] = rig.jobs(event())
    first_try = clock.now

    rig.apply([job])
    delay = rig.due()[job.entry_id] - clock.now
    rig.apply(rig.take_due())

    retried, applied = records(rig.store)
    assert retried["step"] == "rescheduled"
    assert (retried["why"], retried["delay"]) == ("retry", round(delay, 3))
    assert retried["tried"] == {
        "attempt": 1,
        "at": first_try,
        "httpStatus": 503,
        "error": "TransientError",
    }
    assert (applied["outcome"], applied["attempts"], applied["tried"]["attempt"]) == (
        "applied",
        2,
        2,
    )


def test_a_lost_answer_records_what_reading_the_case_back_found(
    rig: Rig, thalamus: FakeThalamus
) -> None:
    thalamus.fail("PUT", raises=httpx.ReadTimeout, after_apply=True)
    [job] = rig.jobs(event(comments=[{"description": "only once"}]))

    rig.apply([job])
    rig.apply(rig.take_due())

    lost, applied = records(rig.store)
    assert lost["tried"]["error"] == "OutcomeUnknown"
    assert lost["tried"]["cause"] == "ReadTimeout"
    assert applied["outcome"] == "applied"
    assert applied["tried"] == {"attempt": 2, "at": applied["t"], "readBack": "tookEffect"}


def test_a_superseded_event_records_the_change_that_superseded_it(
    rig: Rig, thalamus: FakeThalamus
) -> None:
    old_job, new_job = rig.jobs(event("old", comments=[{"description": "late"}]), event("new", T1))
    rig.apply([new_job])

    rig.apply([old_job])

    superseded = records(rig.store)[-1]
    assert (superseded["id"], superseded["outcome"]) == ("old", "superseded")
    moment, entry = order_key_parts(superseded["supersededBy"])
    assert (moment.isoformat(), entry) == ("2026-11-28T10:16:00+00:00", new_job.entry_id)
    assert superseded["tried"]["httpStatus"] == 201, "its comments were posted"


def test_a_dead_lettered_event_records_the_api_code_and_never_its_detail(
    rig: Rig, thalamus: FakeThalamus
) -> None:
    thalamus.fail(
        "PUT", status=400, body={"errors": {"amount": "invalidCaseField"}, "detail": "x=9"}
    )
    [job] = rig.jobs(event(caseData={"amount": 9}))

    rig.apply([job])

    [record] = records(rig.store)
    assert (record["outcome"], record["reason"], record["httpStatus"]) == (
        "deadlettered",
        "invalidCaseField",
        400,
    )
    assert record["tried"]["code"] == "invalidCaseField"
    assert record["tried"]["error"] == "PermanentError"
    assert "detail" not in record


def test_waits_for_a_busy_case_and_an_open_breaker_are_recorded_without_an_attempt(
    rig: Rig, thalamus: FakeThalamus, store: redis.Redis, clock: Clock
) -> None:
    hold_case(store, "x", "9-0", "other-task")
    [job] = rig.jobs(event())
    rig.apply([job])
    store.set(keys.BREAKER_OPEN, "5 calls in a row failed")
    store.delete(f"{keys.CASE_LOCK}:{CASE}")
    clock.advance(1)

    rig.apply(rig.take_due())

    busy, breaker = records(store)
    assert (busy["step"], busy["why"], "tried" in busy) == ("rescheduled", "busyCase", False)
    assert 0 < busy["delay"] <= POLICY.busy_base
    assert (breaker["why"], breaker["delay"]) == ("breaker", POLICY.breaker_wait)


def test_a_duplicate_records_its_outcome(rig: Rig, thalamus: FakeThalamus) -> None:
    rig.apply(rig.jobs(event()))

    rig.apply(rig.jobs(event()))

    assert steps(rig.store) == [("e1", "outcome", "applied"), ("e1", "outcome", "duplicate")]


def test_the_trace_is_written_in_the_outcome_transaction_or_not_at_all(
    rig: Rig, thalamus: FakeThalamus
) -> None:
    [job] = rig.jobs(event())
    add_outcome = outcomes_module.add_outcome

    def aborting(pipe: Any, *args: Any, **kwargs: Any) -> Any:
        # A command the server refuses while queueing aborts the whole MULTI at EXEC.
        pipe.execute_command("NOSUCHCOMMAND")
        return add_outcome(pipe, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(outcomes_module, "add_outcome", aborting)
        with pytest.raises(redis.ResponseError):
            rig.apply([job])

    assert rig.outcomes() == []
    assert records(rig.store) == [], "no trace without its outcome"

    rig.apply(rig.take_due())

    assert steps(rig.store) == [("e1", "outcome", "applied")]


def test_with_tracing_off_nothing_is_recorded(make_rig: MakeRig, thalamus: FakeThalamus) -> None:
    rig = make_rig(trace_bounds=trace.Bounds(length=0))

    rig.apply(rig.jobs(event()))

    assert rig.outcome_types() == [("e1", "applied")]
    assert rig.store.keys("casesync:trace:*") == []
