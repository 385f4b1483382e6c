"""The record of the API requests the simulator received, for tests and benchmarks to inspect.

Bounded (a deque with a maximum length) so a long benchmark does not grow memory without limit:
the oldest entries go first.
"""

from __future__ import annotations

from collections import deque
from typing import Any, TypedDict


class RecordedRequest(TypedDict):
    """One API request: ``status`` is None and ``dropped`` True when no answer was sent."""

    method: str
    path: str
    body: Any
    status: int | None
    time: float
    caseId: int | None
    dropped: bool


class RequestRecord:
    """The last ``size`` API requests, oldest first."""

    def __init__(self, size: int) -> None:
        self._entries: deque[RecordedRequest] = deque(maxlen=size)

    def add(self, entry: RecordedRequest) -> None:
        self._entries.append(entry)

    def entries(self, case_id: int | None = None) -> list[RecordedRequest]:
        if case_id is None:
            return list(self._entries)
        return [entry for entry in self._entries if entry["caseId"] == case_id]

    def clear(self) -> None:
        self._entries.clear()
