"""The simulator's catalogue and the update-case validation against it.

The catalogue is what a Thalamus Back Office configures: categories (a tree whose parent nodes are
"system nodes" no case may use), case types with their fields, the status and resolution names, and
the cases that exist when the server starts. Validation here is pure (no HTTP, no state), so every
error code of ``PUT /api/v4/cases/{id}`` is unit-tested in milliseconds.

Every assumption the public docs leave open ([ASSUME] in thalamus-api.md) is decided in this module
or in ``app.py``: the error keys, case-insensitive names, dates returned as epoch milliseconds.
"""

from __future__ import annotations

import datetime as dt
import importlib.resources
import json
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FieldKind = Literal["Boolean", "Decimal", "Number", "Date", "Text"]
Errors = dict[str, str]

# The keys and codes of the update-case errors (thalamus-api.md §3, "Simulator keys").
INVALID_ID = "invalidId"
CODE_REQUIRED = "CodeRequired"
INVALID_CODE = "InvalidCode"
SYSTEM_NODE = "CategorySystemNode"
INVALID_NAME = "InvalidName"
INVALID_CASE_FIELD = "invalidCaseField"
INVALID_FORMAT = "InvalidFormat"

_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldDef(_Strict):
    """A case field: its code in ``caseData``, its kind, and whether ``null`` is refused."""

    code: str
    kind: FieldKind
    required: bool = True


class CategoryDef(_Strict):
    """A category; one with children, or flagged ``system``, is a system node."""

    code: str
    name: str = ""
    parent: str | None = None
    system: bool = False
    active: bool = True


class CaseTypeDef(_Strict):
    """A case type; ``statuses``/``resolutions`` narrow the catalogue-wide names for it."""

    code: str
    name: str = ""
    fields: list[FieldDef] = Field(default_factory=list)
    statuses: list[str] | None = None
    resolutions: list[str] | None = None


class TypeCategoryDef(_Strict):
    """A row of ``GET /api/v4/cases/typecategory``: one (type, category) pair."""

    typeCode: str
    categoryCode: str
    visibleInApp: bool = True
    defaultAnswer: str = ""


class SeedCase(_Strict):
    """A case that exists at start; ``caseData`` takes values as the update body does."""

    id: int = Field(ge=1)
    categoryCode: str
    typeCode: str
    status: str
    resolution: str
    caseData: dict[str, Any] = Field(default_factory=dict)
    comments: list[str] = Field(default_factory=list)


class SeedRange(_Strict):
    """Cases ``first``..``last`` all alike, so a benchmark can spread over many ids."""

    first: int = Field(ge=1)
    last: int = Field(ge=1)
    categoryCode: str
    typeCode: str
    status: str
    resolution: str
    caseData: dict[str, Any] = Field(default_factory=dict)

    def cases(self) -> list[SeedCase]:
        shared = self.model_dump(exclude={"first", "last"})
        return [SeedCase(id=case_id, **shared) for case_id in range(self.first, self.last + 1)]


class CatalogueFile(_Strict):
    """The JSON file given with ``--catalogue`` (see ``default_catalogue.json``)."""

    categories: list[CategoryDef]
    caseTypes: list[CaseTypeDef]
    typeCategories: list[TypeCategoryDef] = Field(default_factory=list)
    statuses: list[str]
    resolutions: list[str]
    seedCases: list[SeedRange] = Field(default_factory=list)
    cases: list[SeedCase] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references_resolve(self) -> CatalogueFile:
        categories = {category.code for category in self.categories}
        types = {case_type.code for case_type in self.caseTypes}
        for category in self.categories:
            if category.parent is not None and category.parent not in categories:
                raise ValueError(f"category {category.code}: unknown parent {category.parent}")
        pairs = [(row.categoryCode, row.typeCode) for row in self.typeCategories]
        pairs += [(row.categoryCode, row.typeCode) for row in self.seedCases]
        pairs += [(row.categoryCode, row.typeCode) for row in self.cases]
        for category_code, type_code in pairs:
            if category_code not in categories or type_code not in types:
                raise ValueError(f"unknown category {category_code} or type {type_code}")
        return self


class Catalogue:
    """A loaded catalogue, indexed for the lookups every request makes."""

    def __init__(self, source: CatalogueFile) -> None:
        self.source = source
        self.categories = {category.code: category for category in source.categories}
        self.types = {case_type.code: case_type for case_type in source.caseTypes}
        parents = {category.parent for category in source.categories if category.parent}
        self.system_nodes = frozenset(
            category.code
            for category in source.categories
            if category.system or category.code in parents
        )
        self.seed = [case for seed in source.seedCases for case in seed.cases()] + list(
            source.cases
        )
        for case in self.seed:
            errors = validate_update(self, True, _seed_body(case))
            if errors:
                raise ValueError(f"seeded case {case.id} is not valid: {errors}")

    def status_name(self, type_code: str, given: str) -> str | None:
        """The catalogue's spelling of a status name of this type, matched case-insensitively."""
        case_type = self.types.get(type_code)
        names = (case_type.statuses if case_type else None) or self.source.statuses
        return _match_name(names, given)

    def resolution_name(self, type_code: str, given: str) -> str | None:
        """The catalogue's spelling of a resolution name of this type, case-insensitively."""
        case_type = self.types.get(type_code)
        names = (case_type.resolutions if case_type else None) or self.source.resolutions
        return _match_name(names, given)

    def type_categories(
        self, visibility: str | None, type_code: str | None, category_code: str | None
    ) -> list[dict[str, Any]]:
        """The ``caseTypeCategories`` rows matching the filters of the typecategory endpoint."""
        rows = []
        for row in self.source.typeCategories:
            if visibility == "app" and not row.visibleInApp:
                continue
            if type_code and row.typeCode != type_code:
                continue
            if category_code and row.categoryCode != category_code:
                continue
            rows.append(
                {
                    "caseTypeCode": row.typeCode,
                    "caseTypeName": self.types[row.typeCode].name or row.typeCode,
                    "caseCategoryCode": row.categoryCode,
                    "caseCategoryName": self.categories[row.categoryCode].name or row.categoryCode,
                    "defaultAnswer": row.defaultAnswer,
                }
            )
        return rows


def load_catalogue(path: Path | None = None) -> Catalogue:
    """The catalogue in ``path``, or the built-in default one."""
    if path is None:
        text = (
            importlib.resources.files("thalamus.simulator")
            .joinpath("default_catalogue.json")
            .read_text(encoding="utf-8")
        )
    else:
        text = path.read_text(encoding="utf-8")
    return Catalogue(CatalogueFile.model_validate(json.loads(text)))


def _seed_body(case: SeedCase) -> dict[str, Any]:
    return case.model_dump(include={"categoryCode", "typeCode", "status", "resolution", "caseData"})


def _match_name(names: list[str], given: str) -> str | None:
    wanted = given.strip().lower()
    return next((name for name in names if name.lower() == wanted), None)


def validate_update(catalogue: Catalogue, case_exists: bool, body: Mapping[str, Any]) -> Errors:
    """Every error of an update-case body at once, as the ``errors`` object of the 400 answer."""
    errors: Errors = {}
    if not case_exists:
        errors["caseInstanceId"] = INVALID_ID
    checks = {
        "categoryCode": _category_error(catalogue, body.get("categoryCode")),
        "typeCode": _type_error(catalogue, body.get("typeCode")),
    }
    # With an unknown type the names are checked against the catalogue-wide lists; the fields
    # cannot be checked at all, and the typeCode error already says why.
    type_code: str = body["typeCode"] if checks["typeCode"] is None else ""
    checks["status"] = _name_error(catalogue.status_name, type_code, body.get("status"))
    checks["resolution"] = _name_error(catalogue.resolution_name, type_code, body.get("resolution"))
    if type_code and body.get("caseData") is not None:
        checks["caseData"] = _case_data_error(catalogue.types[type_code], body["caseData"])
    checks["comments"] = _comments_error(body.get("comments"))
    errors.update({key: code for key, code in checks.items() if code is not None})
    return errors


def _category_error(catalogue: Catalogue, code: Any) -> str | None:
    if code is None or (isinstance(code, str) and not code.strip()):
        return CODE_REQUIRED
    category = catalogue.categories.get(code) if isinstance(code, str) else None
    if category is None or not category.active:
        return INVALID_CODE
    return SYSTEM_NODE if code in catalogue.system_nodes else None


def _type_error(catalogue: Catalogue, code: Any) -> str | None:
    if code is None or (isinstance(code, str) and not code.strip()):
        return CODE_REQUIRED
    return None if isinstance(code, str) and code in catalogue.types else INVALID_CODE


def _name_error(lookup: Callable[[str, str], str | None], type_code: str, name: Any) -> str | None:
    # Absent (or null) keeps the current value; anything else must be a known name.
    if name is None:
        return None
    return None if isinstance(name, str) and lookup(type_code, name) else INVALID_NAME


def _comments_error(comments: Any) -> str | None:
    if comments is None:
        return None
    if not isinstance(comments, list):
        return INVALID_FORMAT
    for comment in comments:
        description = comment.get("description") if isinstance(comment, dict) else None
        if not isinstance(description, str) or not description.strip():
            return INVALID_FORMAT
    return None


def _case_data_error(case_type: CaseTypeDef, data: Any) -> str | None:
    """``invalidCaseField`` unless ``data`` holds exactly the type's fields, each of its kind."""
    if not isinstance(data, dict):
        return INVALID_CASE_FIELD
    given = {key: value for key, value in data.items() if key != "links"}
    fields = {field.code: field for field in case_type.fields}
    if set(given) != set(fields):
        return INVALID_CASE_FIELD
    for code, value in given.items():
        if not value_fits(fields[code], value):
            return INVALID_CASE_FIELD
    return None


def value_fits(field: FieldDef, value: Any) -> bool:
    """True when ``value`` is of the field's kind as the update body sends it."""
    if value is None:
        return not field.required
    if field.kind == "Boolean":
        return isinstance(value, bool)
    if field.kind == "Decimal":
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        )
    if field.kind == "Number":
        return isinstance(value, int) and not isinstance(value, bool)
    if field.kind == "Date":
        # [ASSUME] A number of epoch ms is taken too: GET returns dates that way (thalamus-api.md
        # §7), and a client completing a partial caseData cannot tell a Date field from a Number
        # one, so it sends back what it read. Confirm with the instance owner (§8).
        if isinstance(value, int) and not isinstance(value, bool):
            return value >= 0
        return isinstance(value, str) and date_to_ms(value) is not None
    return isinstance(value, str)


def date_to_ms(value: str) -> int | None:
    """A caseData date as epoch ms: ``YYYY-MM-DD`` (UTC midnight) or a digit string (already ms)."""
    if value.isdigit():
        return int(value)
    if not _ISO_DATE.match(value):
        return None
    try:
        day = dt.date.fromisoformat(value)
    except ValueError:
        return None
    moment = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    return int((moment - _EPOCH).total_seconds()) * 1000


def stored_case_data(case_type: CaseTypeDef, data: Mapping[str, Any]) -> dict[str, Any]:
    """caseData as the server keeps and returns it: dates become epoch ms (thalamus-api.md §7)."""
    kinds = {field.code: field.kind for field in case_type.fields}
    stored: dict[str, Any] = {}
    for code, value in data.items():
        if code == "links":
            continue
        if kinds.get(code) == "Date" and isinstance(value, str):
            value = date_to_ms(value)
        stored[code] = value
    return stored
