"""The cases the simulator holds, and the effect of an accepted update on them.

All state lives in one event loop and no function here awaits, so each update is atomic without a
lock: a benchmark's concurrent PUTs never wait for each other here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from thalamus.simulator.catalogue import Catalogue, SeedCase, stored_case_data


@dataclass
class StoredCase:
    """One case as the server keeps it; ``updates`` counts the PUTs that took effect."""

    id: int
    categoryCode: str
    typeCode: str
    status: str
    resolution: str
    caseData: dict[str, Any]
    creationDate: int
    lastUpdateDate: int
    comments: list[dict[str, Any]] = field(default_factory=list)
    updates: int = 0

    def to_json(self) -> dict[str, Any]:
        """The case object of the API (thalamus-api.md §5, "Case object")."""
        return {
            "id": self.id,
            "categoryCode": self.categoryCode,
            "typeCode": self.typeCode,
            "status": self.status,
            "resolution": self.resolution,
            "comments": [dict(comment) for comment in self.comments],
            "caseData": {**self.caseData, "links": []},
            "creationDate": self.creationDate,
            "lastUpdateDate": self.lastUpdateDate,
        }


class CaseStore:
    """The simulator's cases, seeded from the catalogue and restored by :meth:`reset`."""

    def __init__(self, catalogue: Catalogue, clock: Callable[[], float] = time.time) -> None:
        self._catalogue = catalogue
        self._clock = clock
        self._cases: dict[int, StoredCase] = {}
        self._next_comment_id = 1
        self.reset()

    def reset(self) -> None:
        now = self._now_ms()
        self._cases = {}
        self._next_comment_id = 1
        for seed in self._catalogue.seed:
            self._cases[seed.id] = self._seeded(seed, now)

    def get(self, case_id: int) -> StoredCase | None:
        return self._cases.get(case_id)

    def __contains__(self, case_id: object) -> bool:
        return case_id in self._cases

    def apply(self, case_id: int, body: Mapping[str, Any], author: str) -> StoredCase:
        """Apply a validated update body: codes, names, caseData, and the new comments appended."""
        case = self._cases[case_id]
        now = self._now_ms()
        case.categoryCode = body["categoryCode"]
        case.typeCode = body["typeCode"]
        if body.get("status") is not None:
            case.status = self._catalogue.status_name(case.typeCode, body["status"]) or case.status
        if body.get("resolution") is not None:
            resolution = self._catalogue.resolution_name(case.typeCode, body["resolution"])
            case.resolution = resolution or case.resolution
        if body.get("caseData") is not None:
            case.caseData = stored_case_data(self._catalogue.types[case.typeCode], body["caseData"])
        for comment in body.get("comments") or []:
            case.comments.append(self._comment(comment["description"], author, now))
        case.lastUpdateDate = now
        case.updates += 1
        return case

    def _seeded(self, seed: SeedCase, now: int) -> StoredCase:
        case_type = self._catalogue.types[seed.typeCode]
        case = StoredCase(
            id=seed.id,
            categoryCode=seed.categoryCode,
            typeCode=seed.typeCode,
            status=seed.status,
            resolution=seed.resolution,
            caseData=stored_case_data(case_type, seed.caseData),
            creationDate=now,
            lastUpdateDate=now,
        )
        case.comments = [self._comment(text, "system", now) for text in seed.comments]
        return case

    def _comment(self, description: str, author: str, now: int) -> dict[str, Any]:
        comment = {
            "id": self._next_comment_id,
            "description": description,
            "creationDate": now,
            "author": author,
        }
        self._next_comment_id += 1
        return comment

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)
