"""Parsing and validating an events-stream entry (contract §2)."""

from __future__ import annotations

import contextlib
import copy
import json
import re
import threading
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.events import (
    CODE_REQUIRED,
    INVALID_EVENT,
    InvalidEvent,
    Limits,
    identity,
    parse_entry,
    parse_event,
    replyto_problem,
)
from settings import REPLYTO_PATTERN

#: The reader's clock: five minutes after the sample event's time.
NOW = 1_795_861_200.0  # 2026-11-28T10:20:00Z


def event(**changes: Any) -> dict[str, Any]:
    """The contract's sample event; ``data__x`` changes ``data.x``; a value of ``...`` removes."""
    document: dict[str, Any] = {
        "specversion": "1.0",
        "id": "0b7e6f1c-2d0a-4c47-9a61-3f1f5f0c9a11",
        "source": "urn:example:billing",
        "type": "thalamus.case.update",
        "time": "2026-11-28T10:15:00Z",
        "subject": "12345",
        "datacontenttype": "application/json",
        "replyto": "billing:case-results",
        "data": {
            "caseInstanceId": 12345,
            "categoryCode": "Reclamo",
            "typeCode": "Telefonico",
            "status": "In Progress",
            "resolution": "Resolved",
            "comments": [{"description": "Customer called back"}],
            "caseData": {"amount": 120.5},
        },
    }
    document = copy.deepcopy(document)
    for key, value in changes.items():
        holder, name = (document["data"], key[6:]) if key.startswith("data__") else (document, key)
        if value is ...:
            holder.pop(name, None)
        else:
            holder[name] = value
    return document


def refusal(document: Any, limits: Limits | None = None) -> InvalidEvent:
    raw = document if isinstance(document, str) else json.dumps(document)
    with pytest.raises(InvalidEvent) as caught:
        parse_event(raw, limits or Limits(), now=NOW)
    return caught.value


def test_the_contract_sample_event_is_accepted_with_every_field() -> None:
    parsed = parse_entry({"event": json.dumps(event())}, now=NOW)

    assert parsed.case_id == 12345
    assert (parsed.id, parsed.source) == (
        "0b7e6f1c-2d0a-4c47-9a61-3f1f5f0c9a11",
        "urn:example:billing",
    )
    assert parsed.replyto == "billing:case-results"
    assert parsed.time.isoformat() == "2026-11-28T10:15:00+00:00"
    assert parsed.data.update().body() == {
        "categoryCode": "Reclamo",
        "typeCode": "Telefonico",
        "status": "In Progress",
        "resolution": "Resolved",
        "comments": [{"description": "Customer called back"}],
        "caseData": {"amount": 120.5},
    }


def test_only_required_fields_are_enough() -> None:
    minimal = event(subject=..., datacontenttype=..., replyto=..., data__status=...)
    for name in ("resolution", "comments", "caseData"):
        minimal["data"].pop(name)

    parsed = parse_event(json.dumps(minimal), now=NOW)

    assert parsed.data.update().body() == {"categoryCode": "Reclamo", "typeCode": "Telefonico"}


@pytest.mark.parametrize("name", ["specversion", "id", "source", "type", "time", "data"])
def test_a_missing_required_attribute_is_an_invalid_event_naming_it(name: str) -> None:
    problem = refusal(event(**{name: ...}))

    assert problem.reason == INVALID_EVENT
    assert name in problem.detail


def test_a_missing_case_id_is_an_invalid_event_naming_it() -> None:
    problem = refusal(event(data__caseInstanceId=..., subject=...))

    assert problem.reason == INVALID_EVENT
    assert "data.caseInstanceId" in problem.detail


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("specversion", "0.3"),
        ("specversion", 1.0),
        ("type", "thalamus.case.create"),
        ("id", ""),
        ("id", 17),
        ("source", ""),
    ],
)
def test_wrong_cloudevents_attributes_are_invalid_events(name: str, value: Any) -> None:
    problem = refusal(event(**{name: value}))

    assert problem.reason == INVALID_EVENT
    assert problem.detail.startswith(name)


@pytest.mark.parametrize(
    "time",
    [
        "2026-11-28T10:15:00",  # no offset: which zone?
        "2026-11-28",
        "28/11/2026 10:15",
        "yesterday",
        "",
        1795862100,  # a Unix time is not RFC 3339
        "1795862100",
        "2026-11-28T10:15Z",  # RFC 3339 requires the seconds
    ],
)
def test_a_time_that_is_not_rfc3339_with_an_offset_is_an_invalid_event(time: Any) -> None:
    problem = refusal(event(time=time))

    assert problem.reason == INVALID_EVENT
    assert "time" in problem.detail


@pytest.mark.parametrize(
    "time",
    ["2026-11-28T10:15:00Z", "2026-11-28T11:15:00+01:00", "2026-11-28T10:15:00.123456Z"],
)
def test_rfc3339_times_with_an_offset_are_accepted(time: str) -> None:
    assert parse_event(json.dumps(event(time=time)), now=NOW).time.timestamp() == pytest.approx(
        1795860900, abs=1
    )


@pytest.mark.parametrize("case_id", [0, -5, "12345", True, 12345.0, None])
def test_a_case_id_that_is_not_a_positive_integer_is_an_invalid_event(case_id: Any) -> None:
    problem = refusal(event(data__caseInstanceId=case_id, subject=...))

    assert problem.reason == INVALID_EVENT
    assert "data.caseInstanceId" in problem.detail


def test_a_subject_other_than_the_case_id_is_an_invalid_event() -> None:
    problem = refusal(event(subject="54321"))

    assert problem.reason == INVALID_EVENT
    assert "'54321'" in problem.detail
    assert "12345" in problem.detail


def test_unknown_keys_in_data_are_refused_because_they_would_reach_the_api() -> None:
    problem = refusal(event(data__owner="mallory"))

    assert problem.reason == INVALID_EVENT
    assert "data.owner" in problem.detail


def test_unknown_keys_in_a_comment_are_refused() -> None:
    problem = refusal(event(data__comments=[{"description": "x", "author": "mallory"}]))

    assert problem.reason == INVALID_EVENT
    assert "data.comments.0.author" in problem.detail


def test_unknown_top_level_extension_attributes_are_allowed() -> None:
    parsed = parse_event(json.dumps(event(traceparent="00-abc-def-01", tenant="acme")), now=NOW)

    assert parsed.case_id == 12345
    assert "traceparent" not in parsed.data.update().body()


@pytest.mark.parametrize("name", ["categoryCode", "typeCode"])
@pytest.mark.parametrize("value", [..., "", "   ", None])
def test_a_missing_or_empty_code_is_dead_lettered_as_code_required(name: str, value: Any) -> None:
    problem = refusal(event(**{f"data__{name}": value}))

    assert problem.reason == CODE_REQUIRED
    assert f"data.{name}" in problem.detail


@pytest.mark.parametrize("value", [12, ["Reclamo"], {"code": "Reclamo"}])
def test_a_code_of_the_wrong_type_is_an_invalid_event(value: Any) -> None:
    assert refusal(event(data__categoryCode=value)).reason == INVALID_EVENT


def test_a_code_problem_beside_another_problem_is_still_code_required() -> None:
    # The API would answer CodeRequired for this event too: keep its reason.
    problem = refusal(event(data__categoryCode="", data__status=5))

    assert problem.reason == CODE_REQUIRED
    assert "data.status" in problem.detail


@pytest.mark.parametrize(
    "case_data",
    [{"due": "2026-02-30"}, {"nested": {"a": 1}}, ["amount", 1]],
)
def test_case_data_values_the_api_cannot_take_are_invalid_events(case_data: Any) -> None:
    problem = refusal(event(data__caseData=case_data))

    assert problem.reason == INVALID_EVENT
    assert "data.caseData" in problem.detail


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        ("{not json", "not JSON"),
        ("", "not JSON"),
        ('[{"id": "1"}]', "JSON list"),
        ('"an event"', "JSON str"),
        ("null", "JSON NoneType"),
        ("[" * 100_000 + "]" * 100_000, "not JSON"),
    ],
)
def test_text_that_is_not_a_json_object_is_an_invalid_event(raw: str, said: str) -> None:
    problem = refusal(raw)

    assert problem.reason == INVALID_EVENT
    assert said in problem.detail
    assert problem.raw == raw


def test_an_entry_without_an_event_field_is_an_invalid_event_listing_its_fields() -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_entry({"payload": json.dumps(event()), "kind": "x"}, now=NOW)

    assert caught.value.reason == INVALID_EVENT
    assert "'event'" in caught.value.detail
    assert "kind, payload" in caught.value.detail
    assert caught.value.partial == {}


def test_an_event_over_the_size_limit_names_the_variable() -> None:
    problem = refusal(event(data__resolution="x" * 2000), Limits(max_event_bytes=1024))

    assert problem.reason == INVALID_EVENT
    assert "CASESYNC_MAX_EVENT_BYTES" in problem.detail
    assert "1024" in problem.detail


def test_the_size_limit_counts_bytes_not_characters() -> None:
    text = "é" * 400  # 400 characters, 800 bytes
    raw = json.dumps(event(data__resolution=text), ensure_ascii=False)
    limits = Limits(max_event_bytes=len(raw) + 100)

    assert len(raw.encode()) > limits.max_event_bytes
    assert "CASESYNC_MAX_EVENT_BYTES" in refusal(raw, limits).detail


def test_too_many_comments_names_the_variable_and_keeps_the_identity() -> None:
    comments = [{"description": f"c{n}"} for n in range(4)]

    problem = refusal(event(data__comments=comments), Limits(max_comments=3))

    assert problem.reason == INVALID_EVENT
    assert "CASESYNC_MAX_COMMENTS" in problem.detail
    assert problem.partial["caseInstanceId"] == 12345


def test_too_many_case_data_fields_names_the_variable() -> None:
    case_data = {f"f{n}": n for n in range(6)}

    problem = refusal(event(data__caseData=case_data), Limits(max_case_data_fields=5))

    assert problem.reason == INVALID_EVENT
    assert "CASESYNC_MAX_CASE_DATA_FIELDS" in problem.detail


def test_limits_are_inclusive() -> None:
    comments = [{"description": f"c{n}"} for n in range(3)]
    parsed = parse_event(
        json.dumps(event(data__comments=comments)), Limits(max_comments=3), now=NOW
    )

    assert parsed.data.comments is not None
    assert len(parsed.data.comments) == 3


def test_an_invalid_event_keeps_what_identifies_it_for_its_outcome() -> None:
    problem = refusal(event(data__typeCode=...))

    assert problem.partial == {
        "id": "0b7e6f1c-2d0a-4c47-9a61-3f1f5f0c9a11",
        "source": "urn:example:billing",
        "caseInstanceId": 12345,
        "replyto": "billing:case-results",
    }


@pytest.mark.parametrize(
    "raw",
    ["{broken", "[1, 2]", "42", json.dumps({"id": 7, "source": ["x"], "data": "12"})],
)
def test_identity_of_broken_input_is_empty_or_partial_never_an_error(raw: str) -> None:
    found = identity(raw)

    assert all(value is None for value in found.values())


def test_identity_reads_what_it_can_and_ignores_wrong_types() -> None:
    document = {"id": "e1", "source": 3, "data": {"caseInstanceId": True}, "replyto": "team:r"}

    assert identity(json.dumps(document)) == {
        "id": "e1",
        "source": None,
        "caseInstanceId": None,
        "replyto": "team:r",
    }


def test_the_detail_lists_several_problems_and_counts_the_rest() -> None:
    broken = {"specversion": "2", "type": "x", "data": {}}

    problem = refusal(broken)

    assert problem.detail.count(";") == 5
    assert problem.detail.endswith("more")
    assert "specversion" in problem.detail


# replyto: never a key casesync or Celery uses, and what CASESYNC_REPLYTO_PATTERN allows.

#: Every key casesync, Celery and kombu use, with the default settings.
RESERVED_KEYS = [
    "casesync",  # the task queue: writing a stream there stopped every worker
    "casesync\x06\x163",  # the task queue at a priority (kombu's suffix)
    "casesync:events",
    "casesync:results",
    "casesync:dead-letter",
    "casesync:ledger:3:urn:e1",
    "casesync:lock:case:12345",
    "casesync:breaker:open",
    "_kombu.binding.casesync",
    "_kombu.binding.celeryev",
    "_kombu.binding.celery.pidbox",
    "unacked",
    "unacked_index",
    "unacked_mutex",
    "celery",
    "celeryev",
    "celeryev.3f1e2a",
    "celery@host.celery.pidbox",
    "4a1b7c2e.reply.celery.pidbox",
]


@pytest.mark.parametrize("name", RESERVED_KEYS)
def test_a_replyto_naming_a_key_casesync_or_celery_uses_is_an_invalid_event(name: str) -> None:
    problem = refusal(event(replyto=name))

    assert problem.reason == INVALID_EVENT
    assert "casesync, Celery or kombu uses" in problem.detail
    assert problem.partial["replyto"] is None, "its outcome must not go there either"


@pytest.mark.parametrize("name", RESERVED_KEYS)
def test_no_replyto_pattern_setting_lets_a_reserved_key_through(name: str) -> None:
    anything = Limits(replyto_pattern=re.compile(r"(?s).*"))

    assert replyto_problem(name, anything) is not None


@pytest.mark.parametrize("name", RESERVED_KEYS)
def test_the_default_replyto_pattern_alone_excludes_every_reserved_key(name: str) -> None:
    assert re.fullmatch(REPLYTO_PATTERN, name) is None


def test_the_configured_streams_and_task_queue_are_reserved_whatever_they_are_called() -> None:
    limits = Limits(
        own_streams=frozenset({"ops:events", "ops:results", "ops:dead"}), task_queue="ops-tasks"
    )

    for name in ("ops:events", "ops:results", "ops:dead", "ops-tasks", "ops-tasks\x06\x169"):
        assert replyto_problem(name, limits) is not None, name
    assert replyto_problem("ops:case-results", limits) is None


@pytest.mark.parametrize(
    "name",
    [
        "results",  # no namespace
        ":results",
        "billing:",
        "billing:case results",  # a space
        "billing:résultats",  # not ASCII
        "billing:case\nresults",
        "billing:case\x00results",
        "_private:results",
        "Casesync",
        "billing:" + "r" * 250,  # longer than 256
    ],
)
def test_a_replyto_the_pattern_does_not_allow_is_an_invalid_event_naming_the_setting(
    name: str,
) -> None:
    problem = refusal(event(replyto=name))

    assert problem.reason == INVALID_EVENT
    assert "replyto" in problem.detail
    assert problem.partial["replyto"] is None


def test_a_replyto_over_256_characters_is_refused_before_any_pattern_runs() -> None:
    assert "over the limit of 256" in (replyto_problem("billing:" + "r" * 250) or "")


def test_the_detail_of_a_replyto_off_pattern_names_the_setting() -> None:
    assert "CASESYNC_REPLYTO_PATTERN" in refusal(event(replyto="results")).detail


@pytest.mark.parametrize(
    "name",
    [
        "billing:case-results",
        "team:results",
        "billing.eu:case_results/v2",
        "crm-2:{tenant-7}:results",
        "Billing:Results",
        "a:b",
    ],
)
def test_a_replyto_of_a_publishers_own_stream_is_accepted(name: str) -> None:
    parsed = parse_event(json.dumps(event(replyto=name)), now=NOW)

    assert parsed.replyto == name


def test_a_narrower_replyto_pattern_refuses_what_it_does_not_match() -> None:
    billing_only = Limits(replyto_pattern=re.compile(r"billing:[a-z-]+"))

    assert parse_event(json.dumps(event()), billing_only, now=NOW).replyto == "billing:case-results"
    problem = refusal(event(replyto="team:results"), billing_only)
    assert "CASESYNC_REPLYTO_PATTERN" in problem.detail
    assert "billing:[a-z-]+" in problem.detail


def test_an_event_invalid_for_another_reason_does_not_reply_to_a_reserved_key() -> None:
    problem = refusal(event(replyto="casesync", data__typeCode=...))

    assert problem.reason == CODE_REQUIRED
    assert problem.partial["replyto"] is None


def test_identity_drops_a_replyto_the_rules_refuse() -> None:
    raw = json.dumps({"id": "e1", "replyto": "unacked"})

    assert identity(raw)["replyto"] is None


# time: not further in the future than CASESYNC_MAX_CLOCK_SKEW.


def test_an_event_from_the_future_is_an_invalid_event_naming_the_setting() -> None:
    problem = refusal(event(time="2026-11-28T10:25:01Z"))  # 301 s after NOW

    assert problem.reason == INVALID_EVENT
    assert "CASESYNC_MAX_CLOCK_SKEW" in problem.detail
    assert "301 s ahead" in problem.detail
    assert problem.partial["id"] == "0b7e6f1c-2d0a-4c47-9a61-3f1f5f0c9a11", "its outcome names it"


@pytest.mark.parametrize("time", ["9999-12-31T23:59:59Z", "2126-11-28T10:15:00+14:00"])
def test_an_event_from_the_far_future_cannot_supersede_every_change_of_its_case(time: str) -> None:
    assert "CASESYNC_MAX_CLOCK_SKEW" in refusal(event(time=time)).detail


@pytest.mark.parametrize(
    "time", ["2026-11-28T10:25:00Z", "2026-11-28T11:25:00+01:00", "2020-01-01T00:00:00Z"]
)
def test_an_event_within_the_clock_skew_or_from_the_past_is_accepted(time: str) -> None:
    assert parse_event(json.dumps(event(time=time)), now=NOW).case_id == 12345


def test_the_clock_skew_is_a_setting() -> None:
    raw = json.dumps(event(time="2026-11-28T10:20:01Z"))

    assert "CASESYNC_MAX_CLOCK_SKEW" in refusal(raw, Limits(max_clock_skew=0)).detail
    assert parse_event(raw, Limits(max_clock_skew=1), now=NOW).case_id == 12345


# Other bounds on what one event may hold.


def test_the_largest_64_bit_case_id_is_accepted() -> None:
    parsed = parse_event(json.dumps(event(data__caseInstanceId=2**63 - 1, subject=...)), now=NOW)

    assert parsed.case_id == 2**63 - 1


@pytest.mark.parametrize("case_id", [2**63, 10**100])
def test_a_case_id_beyond_64_bits_is_an_invalid_event(case_id: int) -> None:
    problem = refusal(event(data__caseInstanceId=case_id, subject=...))

    assert problem.reason == INVALID_EVENT
    assert "data.caseInstanceId" in problem.detail


def test_an_integer_of_thousands_of_digits_is_an_invalid_event_not_a_crash() -> None:
    # Python refuses to convert more than 4,300 digits: a ValueError, not a JSON error.
    raw = json.dumps(event()).replace('"caseInstanceId": 12345', '"caseInstanceId": ' + "7" * 5000)

    problem = refusal(raw)

    assert problem.reason == INVALID_EVENT
    assert identity(raw) == {}


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_or_infinity_in_case_data_is_an_invalid_event_not_a_null_sent_on(constant: str) -> None:
    raw = json.dumps(event(data__caseData={"amount": 1.5})).replace("1.5", constant)

    problem = refusal(raw)

    assert problem.reason == INVALID_EVENT
    assert f"{constant.lstrip('-')} is not a JSON number" in problem.detail


@pytest.mark.parametrize("name", ["id", "source"])
def test_an_id_or_source_over_1024_characters_is_an_invalid_event(name: str) -> None:
    problem = refusal(event(**{name: "x" * 1025}))

    assert problem.reason == INVALID_EVENT
    assert problem.detail.startswith(name)


def test_deep_nesting_within_the_size_limit_is_refused_at_once_in_a_worker_thread() -> None:
    # Intake and the update tasks run in threads: the parser must stop at its depth limit, well
    # before it runs out of a thread's stack, and fast.
    nested = "[" * 200_000 + "]" * 200_000
    raw = json.dumps(event()).replace('"data":', f'"x": {nested}, "data":')
    problems: list[InvalidEvent] = []

    def parse() -> None:
        with pytest.raises(InvalidEvent) as caught:
            parse_event(raw, Limits(max_event_bytes=len(raw)), now=NOW)
        problems.append(caught.value)

    started = time.perf_counter()
    worker = threading.Thread(target=parse)
    worker.start()
    worker.join()

    assert time.perf_counter() - started < 0.5
    [problem] = problems
    assert problem.reason == INVALID_EVENT
    assert "not JSON" in problem.detail


@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_any_text_at_all_is_an_event_or_an_invalid_event_never_another_error(raw: str) -> None:
    with contextlib.suppress(InvalidEvent):
        parse_event(raw, now=NOW)
