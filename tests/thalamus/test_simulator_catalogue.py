"""The update-case validation of the simulator, without HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.thalamus.samples import valid_update
from thalamus.simulator.catalogue import (
    Catalogue,
    CatalogueFile,
    date_to_ms,
    load_catalogue,
    validate_update,
)

CATALOGUE = load_catalogue()


def test_default_catalogue_seeds_a_thousand_updatable_cases() -> None:
    ids = {case.id for case in CATALOGUE.seed}
    assert set(range(1, 5001)) <= ids
    assert "Servicios" in CATALOGUE.system_nodes
    assert "Reclamo" not in CATALOGUE.system_nodes


def test_a_valid_update_has_no_errors() -> None:
    assert validate_update(CATALOGUE, True, valid_update()) == {}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"categoryCode": None}, {"categoryCode": "CodeRequired"}),
        ({"categoryCode": " "}, {"categoryCode": "CodeRequired"}),
        ({"categoryCode": "Nope"}, {"categoryCode": "InvalidCode"}),
        ({"categoryCode": "Baja"}, {"categoryCode": "InvalidCode"}),  # inactive
        ({"categoryCode": "Servicios"}, {"categoryCode": "CategorySystemNode"}),
        ({"typeCode": None}, {"typeCode": "CodeRequired"}),
        ({"typeCode": 12}, {"typeCode": "InvalidCode"}),
        ({"typeCode": "Nope"}, {"typeCode": "InvalidCode"}),
        ({"status": "Reopened"}, {"status": "InvalidName"}),
        ({"resolution": 3}, {"resolution": "InvalidName"}),
        ({"comments": [{"text": "x"}]}, {"comments": "InvalidFormat"}),
    ],
)
def test_each_documented_code_names_its_field(
    changes: dict[str, Any], expected: dict[str, str]
) -> None:
    assert validate_update(CATALOGUE, True, valid_update(**changes)) == expected


def test_an_unknown_case_is_invalid_id() -> None:
    assert validate_update(CATALOGUE, False, valid_update()) == {"caseInstanceId": "invalidId"}


@pytest.mark.parametrize(
    "case_data",
    [
        {"amount": 1.0},  # a field of the type is missing
        {**valid_update()["caseData"], "colour": "red"},  # a field the type lacks
        {**valid_update()["caseData"], "refundApproved": "yes"},
        {**valid_update()["caseData"], "amount": "12.5"},
        {**valid_update()["caseData"], "amount": True},
        {**valid_update()["caseData"], "attempts": 2.5},
        {**valid_update()["caseData"], "incidentDate": "14/03/2025"},
        {**valid_update()["caseData"], "incidentDate": "2025-02-30"},
        {**valid_update()["caseData"], "incidentDate": -1},
        {**valid_update()["caseData"], "incidentDate": True},
        {**valid_update()["caseData"], "notes": 5},
        {**valid_update()["caseData"], "amount": None},  # required
        ["amount"],
    ],
)
def test_case_data_must_hold_every_field_of_its_kind(case_data: Any) -> None:
    errors = validate_update(CATALOGUE, True, valid_update(caseData=case_data))
    assert errors == {"caseData": "invalidCaseField"}


def test_case_data_accepts_timestamp_strings_and_optional_nulls() -> None:
    case_data = {**valid_update()["caseData"], "incidentDate": "1741910400000", "notes": None}
    assert validate_update(CATALOGUE, True, valid_update(caseData=case_data)) == {}


def test_names_match_case_insensitively() -> None:
    assert validate_update(CATALOGUE, True, valid_update(status="in progress")) == {}


def test_every_error_of_a_body_is_listed_at_once() -> None:
    body = {"categoryCode": "Servicios", "status": "Gone", "resolution": "Maybe"}
    assert validate_update(CATALOGUE, False, body) == {
        "caseInstanceId": "invalidId",
        "categoryCode": "CategorySystemNode",
        "typeCode": "CodeRequired",
        "status": "InvalidName",
        "resolution": "InvalidName",
    }


def test_iso_dates_become_utc_midnight_epoch_ms() -> None:
    assert date_to_ms("2025-03-14") == 1741910400000
    assert date_to_ms("1741910400000") == 1741910400000
    assert date_to_ms("soon") is None


def test_a_catalogue_file_with_dangling_references_is_refused(tmp_path: Path) -> None:
    source = json.loads(json.dumps(CATALOGUE.source.model_dump()))
    source["cases"].append({**source["cases"][0], "id": 9999, "typeCode": "Missing"})
    with pytest.raises(ValueError, match="Missing"):
        Catalogue(CatalogueFile.model_validate(source))


def test_a_catalogue_can_be_loaded_from_a_file(tmp_path: Path) -> None:
    source = CATALOGUE.source.model_dump()
    source["seedCases"][0]["last"] = 3
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps(source), encoding="utf-8")
    assert {case.id for case in load_catalogue(path).seed} == {1, 2, 3, 2001}
