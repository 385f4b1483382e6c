"""The simulator's configuration data and the update-case validation, as pure code.

Everything the public docs leave open about validation (thalamus-api.md, [ASSUME]) is decided
here: which field each code is reported under, and how caseData values are checked.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

KINDS = ("Boolean", "Decimal", "Number", "Date", "Text")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class Category:
    code: str
    name: str
    system: bool = False


@dataclass(frozen=True)
class CaseType:
    code: str
    name: str
    categories: tuple[str, ...]
    fields: dict[str, str]


@dataclass(frozen=True)
class Catalogue:
    categories: dict[str, Category]
    types: dict[str, CaseType]
    statuses: frozenset[str]
    resolutions: frozenset[str]
    seed: dict[str, Any] = field(default_factory=dict)

    def seeded_cases(self) -> dict[int, dict[str, Any]]:
        """The cases the simulator starts with, by id."""
        seed = self.seed
        if not seed:
            return {}
        first = int(seed.get("first_id", 1))
        return {
            case_id: _new_case(case_id, seed)
            for case_id in range(first, first + int(seed.get("count", 0)))
        }


def load_catalogue(path: Path | None = None) -> Catalogue:
    """The catalogue in ``path``, or the built-in default."""
    if path is None:
        text = resources.files("thalamus.simulator").joinpath("default_catalogue.json")
        raw = json.loads(text.read_text(encoding="utf-8"))
    else:
        raw = json.loads(path.read_text(encoding="utf-8"))
    return Catalogue(
        categories={
            c["code"]: Category(c["code"], c.get("name", c["code"]), bool(c.get("system")))
            for c in raw["categories"]
        },
        types={
            t["code"]: CaseType(
                t["code"], t.get("name", t["code"]), tuple(t.get("categories", ())), t["fields"]
            )
            for t in raw["types"]
        },
        statuses=frozenset(raw["statuses"]),
        resolutions=frozenset(raw["resolutions"]),
        seed=raw.get("seed_cases", {}),
    )


def _new_case(case_id: int, seed: dict[str, Any]) -> dict[str, Any]:
    data = {key: _as_epoch_ms(value) for key, value in seed.get("caseData", {}).items()}
    return {
        "id": case_id,
        "categoryCode": seed.get("categoryCode"),
        "typeCode": seed.get("typeCode"),
        "status": seed.get("status"),
        "resolution": seed.get("resolution"),
        "comments": [],
        "caseData": data,
        "creationDate": 1_767_225_600_000,
        "lastUpdateDate": 1_767_225_600_000,
    }


def _as_epoch_ms(value: Any) -> Any:
    """A date kept as epoch milliseconds, as the API returns dates."""
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, str) and _ISO_DATE.match(value):
        day = dt.date.fromisoformat(value)
        return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000)
    return value


def validate_update(catalogue: Catalogue, case: dict[str, Any] | None, body: Any) -> dict[str, str]:
    """Every error of an update-case request at once: ``{field: code}``, empty when valid."""
    if not isinstance(body, dict):
        return {"body": "InvalidJson"}
    errors: dict[str, str] = {}
    if case is None:
        errors["caseInstanceId"] = "invalidId"
    category = _check_category(catalogue, body.get("categoryCode"), errors)
    case_type = _check_type(catalogue, body.get("typeCode"), errors)
    if category and case_type and category.code not in case_type.categories:
        errors["typeCode"] = "InvalidCode"
    for key, allowed in (("status", catalogue.statuses), ("resolution", catalogue.resolutions)):
        if key in body and body[key] is not None and body[key] not in allowed:
            errors[key] = "InvalidName"
    if "comments" in body and not _comments_valid(body["comments"]):
        errors["comments"] = "InvalidFormat"
    data = body.get("caseData")
    if data is not None and case_type is not None and not _case_data_valid(case_type, data):
        errors["caseData"] = "invalidCaseField"
    return errors


def _check_category(catalogue: Catalogue, code: Any, errors: dict[str, str]) -> Category | None:
    if not isinstance(code, str) or not code.strip():
        errors["categoryCode"] = "CodeRequired"
        return None
    category = catalogue.categories.get(code)
    if category is None:
        errors["categoryCode"] = "InvalidCode"
    elif category.system:
        errors["categoryCode"] = "CategorySystemNode"
        return None
    return category


def _check_type(catalogue: Catalogue, code: Any, errors: dict[str, str]) -> CaseType | None:
    if not isinstance(code, str) or not code.strip():
        errors["typeCode"] = "CodeRequired"
        return None
    case_type = catalogue.types.get(code)
    if case_type is None:
        errors["typeCode"] = "InvalidCode"
    return case_type


def _comments_valid(comments: Any) -> bool:
    return isinstance(comments, list) and all(
        isinstance(c, dict) and isinstance(c.get("description"), str) and c["description"]
        for c in comments
    )


def _case_data_valid(case_type: CaseType, data: Any) -> bool:
    """Every field of the type, no other, each of its kind (the documented rule)."""
    if not isinstance(data, dict) or set(data) != set(case_type.fields):
        return False
    return all(value_fits(case_type.fields[key], value) for key, value in data.items())


def value_fits(kind: str, value: Any) -> bool:
    if kind == "Boolean":
        return isinstance(value, bool)
    if kind == "Decimal":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "Number":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "Date":
        # YYYY-MM-DD or a timestamp string, as documented; also a number of epoch ms, so a
        # value read back from a GET can be sent again unchanged.
        if isinstance(value, int) and not isinstance(value, bool):
            return True
        return isinstance(value, str) and (value.isdigit() or _is_iso_date(value))
    return isinstance(value, str)  # Text


def _is_iso_date(value: str) -> bool:
    if not _ISO_DATE.match(value):
        return False
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        return False
    return True


def apply_update(
    catalogue: Catalogue,
    case: dict[str, Any],
    body: dict[str, Any],
    *,
    next_comment_id: int,
    now_ms: int,
    author: str,
) -> int:
    """Apply a valid update to ``case``; the next free comment id."""
    for key in ("categoryCode", "typeCode", "status", "resolution"):
        if body.get(key) is not None:
            case[key] = body[key]
    if body.get("caseData") is not None:
        kinds = catalogue.types[case["typeCode"]].fields
        case["caseData"] = {
            key: _as_epoch_ms(value) if kinds.get(key) == "Date" else value
            for key, value in body["caseData"].items()
        }
    for comment in body.get("comments") or []:
        case["comments"].append(
            {
                "id": next_comment_id,
                "description": comment["description"],
                "creationDate": now_ms,
                "author": author,
            }
        )
        next_comment_id += 1
    case["lastUpdateDate"] = now_ms
    return next_comment_id
