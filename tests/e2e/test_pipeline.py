"""The pipeline end to end: a real worker, a real Redis-compatible server, the simulator."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import httpx
import pytest

from ops.processes import free_port
from settings import Settings
from tests.conftest import case_event
from tests.e2e.conftest import TOKEN, Pipeline
from thalamus.simulator.record import RecordedRequest


def _puts(pipeline: Pipeline, case_id: int) -> list[RecordedRequest]:
    return [r for r in pipeline.simulator.admin.requests(case_id) if r["method"] == "PUT"]


def test_an_event_is_applied_and_its_outcome_published(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    event = case_event("e1", 11, status="In Progress", comments=[{"description": "called back"}])
    event["replyto"] = "team:results"
    pipeline.publish(event)
    [outcome] = pipeline.wait_for_outcomes(1)
    assert outcome["type"] == "casesync.update.applied"
    assert outcome["subject"] == "11"
    assert outcome["data"]["requestId"] == "e1"
    assert outcome["data"]["requestSource"] == "urn:test"
    assert outcome["data"]["httpStatus"] == 201
    assert outcome["data"]["case"]["status"] == "In Progress"
    case = pipeline.case(11)
    assert [c["description"] for c in case["comments"]][-1:] == ["called back"]
    replies = pipeline.redis.xrange("team:results")
    assert [json.loads(f["event"])["id"] for _, f in replies] == [outcome["id"]]


def test_a_partial_case_data_is_completed_from_the_current_case(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    before = pipeline.case(12)["caseData"]
    pipeline.publish(case_event("e1", 12, caseData={"amount": 99.5}))
    [outcome] = pipeline.wait_for_outcomes(1)
    assert outcome["type"] == "casesync.update.applied"
    [put] = _puts(pipeline, 12)
    sent = put["body"]["caseData"]
    assert sent["amount"] == 99.5
    fields = {key for key in before if key != "links"}
    assert set(sent) == fields, "every field of the case type is sent"


def test_a_duplicate_and_an_older_change_are_not_applied_again(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    newer = case_event("new", 13, status="Resolved", comments=[{"description": "fixed"}])
    pipeline.publish(newer)
    pipeline.wait_for_outcomes(1)
    older = case_event(
        "old", 13, time="2026-11-28T09:00:00Z", status="Open", comments=[{"description": "late"}]
    )
    pipeline.publish(newer, older)
    outcomes = pipeline.wait_for_outcomes(3)
    kinds = sorted(o["type"] for o in outcomes)
    assert kinds == [
        "casesync.update.applied",
        "casesync.update.duplicate",
        "casesync.update.superseded",
    ]
    case = pipeline.case(13)
    assert case["status"] == "Resolved", "the newer change stands"
    descriptions = [c["description"] for c in case["comments"]]
    assert descriptions.count("fixed") == 1
    assert descriptions.count("late") == 1, "a superseded event's comments are still posted"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"caseInstanceId": 999_999}, "invalidId"),
        ({"categoryCode": "NoSuchCategory"}, "InvalidCode"),
        ({"typeCode": "NoSuchType"}, "InvalidCode"),
        ({"categoryCode": "Servicios"}, "CategorySystemNode"),
        ({"status": "Frozen"}, "InvalidName"),
        ({"resolution": "Maybe"}, "InvalidName"),
        ({"caseData": {"amount": "a lot"}}, "invalidCaseField"),
        ({"caseData": {"noSuchField": 1}}, "invalidCaseField"),
    ],
)
def test_each_documented_refusal_is_dead_lettered_at_once(
    pipeline: Pipeline, data: dict[str, Any], reason: str
) -> None:
    pipeline.start_worker()
    event = case_event("bad", 14)
    event["data"].update(data)
    event.pop("subject")
    pipeline.publish(event)
    [outcome] = pipeline.wait_for_outcomes(1)
    assert outcome["type"] == "casesync.update.deadlettered"
    assert outcome["data"]["reason"] == reason
    assert outcome["data"]["httpStatus"] == 400
    assert outcome["data"]["attempts"] == 1, "never retried"
    [letter] = pipeline.dead_letters()
    assert letter["reason"] == reason
    assert json.loads(letter["event"]) == event, "the original event is kept unchanged"
    assert json.loads(letter["errors"]), "the API's errors object is kept"
    assert letter["detail"]
    assert letter["deadLetteredAt"]
    assert letter["firstAttemptAt"]


def test_an_undocumented_400_code_is_dead_lettered_under_that_code(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    pipeline.simulator.admin.script(
        15, [{"status": 400, "body": {"errors": {"owner": "caseLockedByOperator"}}}]
    )
    pipeline.publish(case_event("e1", 15, status="Open"))
    [outcome] = pipeline.wait_for_outcomes(1)
    assert outcome["data"]["reason"] == "caseLockedByOperator"
    assert outcome["data"]["errors"] == {"owner": "caseLockedByOperator"}


def test_a_transient_failure_is_retried_until_it_recovers(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    pipeline.simulator.admin.script(16, [{"status": 503}, {"status": 502}, {"drop": True}])
    pipeline.publish(case_event("e1", 16, status="Open"))
    [outcome] = pipeline.wait_for_outcomes(1, timeout=30)
    assert outcome["type"] == "casesync.update.applied"
    assert outcome["data"]["attempts"] == 4
    assert pipeline.dead_letters() == []


def test_retry_after_is_respected(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    pipeline.simulator.admin.script(17, [{"status": 429, "headers": {"Retry-After": "2"}}])
    pipeline.publish(case_event("e1", 17, status="Open"))
    [outcome] = pipeline.wait_for_outcomes(1, timeout=30)
    assert outcome["type"] == "casesync.update.applied"
    first, second = _puts(pipeline, 17)
    assert second["time"] - first["time"] >= 2.0


def test_retries_exhausted_are_dead_lettered(pipeline: Pipeline) -> None:
    pipeline.start_worker(CASESYNC_MAX_ATTEMPTS="3")
    pipeline.simulator.admin.script(18, [{"status": 503}] * 10)
    pipeline.publish(case_event("e1", 18, status="Open"))
    [outcome] = pipeline.wait_for_outcomes(1, timeout=30)
    assert outcome["data"]["reason"] == "retriesExhausted"
    assert outcome["data"]["attempts"] == 3
    assert len(_puts(pipeline, 18)) == 3
    [letter] = pipeline.dead_letters()
    assert "503" in letter["detail"]


MALFORMED = {
    "not JSON": "{this is not json",
    "a JSON array": "[1, 2, 3]",
    "not CloudEvents": json.dumps({"hello": "world"}),
    "wrong type": json.dumps({**case_event("x", 1), "type": "thalamus.case.create"}),
    "wrong specversion": json.dumps({**case_event("x", 1), "specversion": "0.3"}),
    "case id a string": json.dumps(
        {**case_event("x", 1), "data": {**case_event("x", 1)["data"], "caseInstanceId": "1"}}
    ),
    "time not RFC 3339": json.dumps({**case_event("x", 1), "time": "yesterday"}),
    "unknown data field": json.dumps(
        {**case_event("x", 1), "data": {**case_event("x", 1)["data"], "priority": "high"}}
    ),
    "huge comment list": json.dumps(
        {
            **case_event("x", 1),
            "data": {
                **case_event("x", 1)["data"],
                "comments": [{"description": "x"}] * 1000,
            },
        }
    ),
    "huge event": json.dumps({**case_event("x", 1), "padding": "x" * 300_000}),
}


def test_malformed_input_is_dead_lettered_without_calling_the_api(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    pipeline.publish(*MALFORMED.values())
    pipeline.redis.xadd("casesync:events", {"payload": "no event field"})
    outcomes = pipeline.wait_for_outcomes(len(MALFORMED) + 1)
    assert {o["data"]["reason"] for o in outcomes} == {"invalidEvent"}
    letters = pipeline.dead_letters()
    assert len(letters) == len(MALFORMED) + 1
    assert all(letter["detail"] for letter in letters), "each says why"
    assert pipeline.simulator.admin.requests() == []


def test_an_event_replying_to_the_task_queue_cannot_stop_the_events_after_it(
    pipeline: Pipeline,
) -> None:
    # Once, an outcome written to "casesync" (the Celery queue's key) made it a stream, and no
    # later event was processed.
    pipeline.start_worker()
    hostile = case_event("hostile", 30, status="Open")
    hostile["replyto"] = "casesync"
    ordinary = [case_event(f"e{n}", 31 + n, status="In Progress") for n in range(20)]
    pipeline.publish(hostile, *ordinary)

    outcomes = pipeline.wait_for_outcomes(21)

    by_id = {o["data"]["requestId"]: o for o in outcomes}
    assert by_id["hostile"]["type"] == "casesync.update.deadlettered"
    assert by_id["hostile"]["data"]["reason"] == "invalidEvent"
    assert "replyto 'casesync'" in by_id["hostile"]["data"]["detail"]
    assert [by_id[f"e{n}"]["type"] for n in range(20)] == ["casesync.update.applied"] * 20
    assert all(pipeline.case(31 + n)["status"] == "In Progress" for n in range(20))
    assert pipeline.redis.type("casesync") != "stream"
    assert pipeline.simulator.admin.requests(30) == []


def test_a_missing_code_is_dead_lettered_as_code_required(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    pipeline.publish(case_event("e1", 19, typeCode=None), case_event("e2", 19, categoryCode=""))
    outcomes = pipeline.wait_for_outcomes(2)
    assert [o["data"]["reason"] for o in outcomes] == ["CodeRequired", "CodeRequired"]
    assert pipeline.simulator.admin.requests() == []


def test_every_entry_of_a_mixed_batch_ends_in_exactly_one_outcome(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    events: list[dict[str, Any] | str] = []
    for n in range(200):
        kind = n % 5
        if kind == 0:
            events.append(f"not json {n}")
        elif kind == 1:
            events.append(case_event(f"e{n}", 100 + n, status="Frozen"))
        else:
            events.append(case_event(f"e{n}", 100 + n, comments=[{"description": f"c{n}"}]))
    pipeline.publish(*events)
    outcomes = pipeline.wait_for_outcomes(200, timeout=90)
    assert len(outcomes) == 200
    ids = Counter(o["data"]["requestId"] for o in outcomes if o["data"]["requestId"])
    assert all(count == 1 for count in ids.values())
    kinds = Counter(o["type"] for o in outcomes)
    assert kinds == {"casesync.update.applied": 120, "casesync.update.deadlettered": 80}


def test_no_secret_reaches_logs_results_or_dead_letters(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    pipeline.simulator.admin.script(20, [{"status": 503}])
    pipeline.publish(
        case_event("e1", 20, status="Open"), case_event("e2", 21, status="Frozen"), "bad"
    )
    pipeline.wait_for_outcomes(3, timeout=30)
    token = TOKEN
    assert token not in json.dumps(pipeline.outcomes())
    assert token not in json.dumps(pipeline.dead_letters())
    assert token not in pipeline.worker_logs()


def test_an_entry_left_by_a_dead_consumer_is_claimed_and_applied(pipeline: Pipeline) -> None:
    pipeline.redis.xgroup_create("casesync:events", "casesync", id="0", mkstream=True)
    pipeline.publish(case_event("orphan", 22, status="Open"))
    pipeline.redis.xreadgroup("casesync", "dead-consumer", {"casesync:events": ">"}, count=1)
    pipeline.start_worker(CASESYNC_CLAIM_IDLE="1")
    [outcome] = pipeline.wait_for_outcomes(1, timeout=30)
    assert outcome["type"] == "casesync.update.applied"
    assert outcome["data"]["requestId"] == "orphan"


def test_an_entry_delivered_too_often_is_dead_lettered_as_poison(pipeline: Pipeline) -> None:
    pipeline.redis.xgroup_create("casesync:events", "casesync", id="0", mkstream=True)
    [entry_id] = pipeline.publish(case_event("poison", 23, status="Open"))
    pipeline.redis.xreadgroup("casesync", "dead-consumer", {"casesync:events": ">"}, count=1)
    # As if five consumers in turn had died while holding it.
    pipeline.redis.xclaim(
        "casesync:events", "casesync", "dead-consumer", 0, [entry_id], retrycount=5
    )
    pipeline.start_worker(CASESYNC_CLAIM_IDLE="1", CASESYNC_MAX_DELIVERIES="5")
    [outcome] = pipeline.wait_for_outcomes(1, timeout=30)
    assert outcome["data"]["reason"] == "poisonEvent"
    assert outcome["data"]["requestId"] == "poison"
    assert pipeline.simulator.admin.requests() == []
    [letter] = pipeline.dead_letters()
    assert "CASESYNC_MAX_DELIVERIES" in letter["detail"]


def test_a_worker_serves_metrics_and_writes_json_outcome_lines(pipeline: Pipeline) -> None:
    port = free_port()
    pipeline.start_worker(CASESYNC_METRICS_PORT=str(port), CASESYNC_LOG_JSON="true")
    pipeline.publish(case_event("m1", 24, status="Open"), case_event("m2", 25, status="Frozen"))
    pipeline.wait_for_outcomes(2)
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert 'casesync_outcomes_total{reason="",type="applied"} 1.0' in metrics
    assert 'casesync_dead_letters_total{reason="InvalidName"} 1.0' in metrics
    assert 'casesync_api_calls_total{status="201"} 1.0' in metrics
    assert "casesync_api_latency_seconds_count" in metrics
    lines = [json.loads(line) for line in pipeline.worker_logs().splitlines() if line[:1] == "{"]
    outcomes = {line["event_id"]: line for line in lines if "outcome" in line}
    assert outcomes["m1"]["case_id"] == 24
    assert outcomes["m2"]["reason"] == "InvalidName"
    assert outcomes["m2"]["attempts"] == 1


def test_a_task_queued_by_the_former_design_is_applied_after_an_upgrade(pipeline: Pipeline) -> None:
    # A casesync.update_case message, one event per task, as workers before the batch design
    # queued it: still in the queue when the new workers start.
    from tasks.app import create_app
    from tasks.batch import LEGACY_TASK_NAME

    env = pipeline.env()
    settings = Settings(
        redis_url=env["CASESYNC_REDIS_URL"], thalamus_url=env["CASESYNC_THALAMUS_URL"]
    )
    event = case_event("old-1", 41, status="Open", comments=[{"description": "from before"}])
    kwargs = {"event": json.dumps(event), "entry_id": "1-1", "case_id": 41, "event_id": "old-1"}
    create_app(settings).send_task(LEGACY_TASK_NAME, kwargs={**kwargs, "attempts": 0})
    pipeline.start_worker()

    [outcome] = pipeline.wait_for_outcomes(1)
    assert outcome["type"] == "casesync.update.applied"
    assert outcome["data"]["requestId"] == "old-1"
    assert [c["description"] for c in pipeline.case(41)["comments"]][-1:] == ["from before"]
