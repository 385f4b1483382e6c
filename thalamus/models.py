"""The shapes casesync sends to and reads from the Thalamus API v4.

Every assumption about the API's JSON that the public docs leave open (see thalamus-api.md) is
kept here and in the client's response parsing, so that a real server's answer corrects it in one
place.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

#: A caseData value: Boolean, Decimal, Number, Date (``YYYY-MM-DD`` or a timestamp string), Text.
CaseDataValue = bool | int | float | str | None

NonEmptyCode = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)
]

_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class Comment(BaseModel):
    """A new comment, in the shape the update-case body takes."""

    model_config = ConfigDict(extra="forbid")

    description: Annotated[str, StringConstraints(min_length=1, max_length=10_000)]


class CaseUpdate(BaseModel):
    """The body of ``PUT /api/v4/cases/{caseInstanceId}``."""

    model_config = ConfigDict(extra="forbid")

    categoryCode: NonEmptyCode
    typeCode: NonEmptyCode
    status: str | None = None
    resolution: str | None = None
    comments: list[Comment] | None = None
    caseData: dict[str, CaseDataValue] | None = None

    @field_validator("caseData")
    @classmethod
    def _dates_as_iso(
        cls, value: dict[str, CaseDataValue] | None
    ) -> dict[str, CaseDataValue] | None:
        # Dates travel as YYYY-MM-DD; reject a malformed one here rather than at the API.
        for key, item in (value or {}).items():
            if isinstance(item, str) and _ISO_DATE.match(item):
                try:
                    dt.date.fromisoformat(item)
                except ValueError as exc:
                    raise ValueError(f"caseData.{key}: {item!r} is not a valid date") from exc
        return value

    def body(self) -> dict[str, Any]:
        """The JSON body, without the keys left unset."""
        return self.model_dump(mode="json", exclude_none=True)


class CaseComment(BaseModel):
    """A comment as the API returns it."""

    model_config = ConfigDict(extra="ignore")

    id: int | None = None
    description: str = ""
    creationDate: int | None = None


class Case(BaseModel):
    """A case as the API returns it; unknown keys are kept, ``caseData`` loses its ``links``."""

    model_config = ConfigDict(extra="allow")

    id: int
    categoryCode: str | None = None
    typeCode: str | None = None
    status: str | None = None
    resolution: str | None = None
    comments: list[CaseComment] = Field(default_factory=list)
    caseData: dict[str, Any] = Field(default_factory=dict)

    @field_validator("caseData", mode="before")
    @classmethod
    def _drop_links(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {key: item for key, item in value.items() if key != "links"}
        return {} if value is None else value

    @field_validator("comments", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value
