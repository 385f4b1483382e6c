"""The shapes casesync sends to Thalamus and reads back from it."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from thalamus.client import ThalamusClient, build_http_client
from thalamus.models import Case, CaseUpdate

CODES = {"categoryCode": "Reclamo", "typeCode": "Telefonico"}


def update(**fields: Any) -> CaseUpdate:
    return CaseUpdate.model_validate({**CODES, **fields})


# --- CaseUpdate --------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["categoryCode", "typeCode"])
@pytest.mark.parametrize("value", ["", "   ", None, "x" * 101])
def test_an_update_needs_non_empty_category_and_type_codes(key: str, value: str | None) -> None:
    with pytest.raises(ValidationError) as caught:
        CaseUpdate.model_validate({**CODES, key: value})
    assert caught.value.errors()[0]["loc"] == (key,)


@pytest.mark.parametrize("key", ["categoryCode", "typeCode"])
def test_an_update_without_a_category_or_type_code_is_refused(key: str) -> None:
    fields = dict(CODES)
    del fields[key]
    with pytest.raises(ValidationError):
        CaseUpdate.model_validate(fields)


def test_codes_lose_surrounding_blanks() -> None:
    assert update(categoryCode=" Reclamo ").categoryCode == "Reclamo"


def test_comments_take_the_shape_the_api_takes() -> None:
    body = update(comments=[{"description": "Customer called back"}]).body()
    assert body["comments"] == [{"description": "Customer called back"}]


@pytest.mark.parametrize(
    "comments",
    [
        ["Customer called back"],
        [{"text": "Customer called back"}],
        [{"description": "x", "id": 10}],
        [{"description": ""}],
        {"description": "not a list"},
    ],
)
def test_a_comment_of_another_shape_is_refused(comments: Any) -> None:
    with pytest.raises(ValidationError):
        update(comments=comments)


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("Boolean", True),
        ("Boolean", False),
        ("Decimal", 150.75),
        ("Number", 2),
        ("Date", "2025-03-14"),
        ("Date", "1741910400000"),
        ("Text", "Called twice, no answer"),
    ],
)
def test_case_data_of_every_field_kind_is_sent_as_given(kind: str, value: Any) -> None:
    sent = update(caseData={kind: value}).body()["caseData"][kind]
    assert sent == value
    assert type(sent) is type(value)


@pytest.mark.parametrize("value", [{"nested": 1}, [1, 2]])
def test_case_data_values_are_flat(value: Any) -> None:
    with pytest.raises(ValidationError):
        update(caseData={"field": value})


@pytest.mark.parametrize("value", ["2025-02-30", "2025-13-01", "2025-00-10", "0000-01-01"])
def test_an_impossible_date_is_refused_before_any_call(value: str) -> None:
    with pytest.raises(ValidationError, match="incidentDate"):
        update(caseData={"incidentDate": value})


def test_a_leap_day_is_a_date() -> None:
    assert update(caseData={"incidentDate": "2024-02-29"}).body()["caseData"] == {
        "incidentDate": "2024-02-29"
    }


def test_the_body_omits_the_keys_left_unset() -> None:
    assert update().body() == CODES
    assert update(status="Open").body() == {**CODES, "status": "Open"}


def test_the_body_keeps_every_key_that_was_set() -> None:
    fields = {
        "status": "In Progress",
        "resolution": "Unresolved",
        "comments": [{"description": "Customer called back"}],
        "caseData": {"refundApproved": True, "amount": 150.75, "attempts": 2},
    }
    assert update(**fields).body() == {**CODES, **fields}


def test_an_unknown_key_in_an_update_is_refused() -> None:
    with pytest.raises(ValidationError):
        update(priority="high")


# --- Case --------------------------------------------------------------------------------------

CASE = {
    "id": 1234,
    "categoryCode": "Reclamo",
    "typeCode": "Telefonico",
    "status": "In Progress",
    "resolution": "Unresolved",
    "comments": [{"id": 10, "description": "Customer called back", "creationDate": 1741950000000}],
    "caseData": {"links": [], "refundApproved": True, "amount": 150.75},
}


def test_a_case_tolerates_keys_it_does_not_know() -> None:
    case = Case.model_validate(
        {**CASE, "assignedOperator": "op@example.com", "lastUpdateDate": 1741950000000}
    )
    assert case.id == 1234
    assert case.model_extra == {
        "assignedOperator": "op@example.com",
        "lastUpdateDate": 1741950000000,
    }


def test_a_case_comment_tolerates_keys_it_does_not_know() -> None:
    comment = {"id": 11, "description": "x", "author": "op@example.com", "attachments": []}
    case = Case.model_validate({**CASE, "comments": [comment]})
    assert case.comments[0].description == "x"


def test_case_data_links_are_not_case_data() -> None:
    case = Case.model_validate(CASE)
    assert case.caseData == {"refundApproved": True, "amount": 150.75}


@pytest.mark.parametrize("empty", [None, {"links": []}])
def test_a_case_without_comments_or_case_data_has_empty_ones(empty: Any) -> None:
    case = Case.model_validate({"id": 1, "comments": None, "caseData": empty})
    assert case.comments == []
    assert case.caseData == {}


def read_case(body: Any) -> Case:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=body)

    http = build_http_client("http://thalamus.test", transport=httpx.MockTransport(answer))
    return ThalamusClient(http).get_case(1234)


@pytest.mark.parametrize(
    "body",
    [
        {"context": {"links": []}, "case": CASE},
        {"context": {"links": []}, "entity": CASE},
        {"links": [], "data": {"activities": [], "entity": CASE}, "errors": {}},
        {"data": {"case": CASE}},
        CASE,
    ],
    ids=["case", "entity", "data.entity", "data.case", "bare"],
)
def test_the_case_is_found_wherever_the_answer_puts_it(body: Any) -> None:
    case = read_case(body)
    assert case.id == 1234
    assert case.status == "In Progress"
    assert case.caseData == {"refundApproved": True, "amount": 150.75}
    assert [comment.id for comment in case.comments] == [10]
