"""Parsing and validating an events-stream entry (contract §2)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from core.events import (
    CODE_REQUIRED,
    INVALID_EVENT,
    InvalidEvent,
    Limits,
    identity,
    parse_entry,
    parse_event,
)


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
        parse_event(raw, limits or Limits())
    return caught.value


def test_the_contract_sample_event_is_accepted_with_every_field() -> None:
    parsed = parse_entry({"event": json.dumps(event())})

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

    parsed = parse_event(json.dumps(minimal))

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
    assert parse_event(json.dumps(event(time=time))).time.timestamp() == pytest.approx(
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
    parsed = parse_event(json.dumps(event(traceparent="00-abc-def-01", tenant="acme")))

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
        parse_entry({"payload": json.dumps(event()), "kind": "x"})

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
    parsed = parse_event(json.dumps(event(data__comments=comments)), Limits(max_comments=3))

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
    raw = json.dumps({"id": "e1", "source": 3, "data": {"caseInstanceId": True}, "replyto": "r"})

    assert identity(raw) == {"id": "e1", "source": None, "caseInstanceId": None, "replyto": "r"}


def test_the_detail_lists_several_problems_and_counts_the_rest() -> None:
    broken = {"specversion": "2", "type": "x", "data": {}}

    problem = refusal(broken)

    assert problem.detail.count(";") == 5
    assert problem.detail.endswith("more")
    assert "specversion" in problem.detail
