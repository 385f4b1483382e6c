"""The trace of what casesync did with each event, kept per case for ``casesync trace``.

Written as the work happens, into the MULTIs that already exist (intake's lease, the applier's
flush), so it costs commands but no round trip. One JSON record per step of an event:

- ``arrived``: intake took the entry (an invalid one is dead-lettered in the same step);
- ``rescheduled``: the event went back to the schedule, after an attempt (``why`` retry) or
  without one (a busy case, the breaker, a Redis fault), with the delay chosen;
- ``outcome``: its outcome, with the attempt that ended it if one did.

An attempt holds its number, when it began, the HTTP status or the error class (and the
exception under it) and API code, and what a read-back of the case found. Records hold ids,
times, statuses, reasons and counts: never a comment's text, a caseData value or a secret.

A case's records are a list, newest first, capped at ``Bounds.length`` and expiring
``Bounds.ttl`` after the last one written; an event's ``(source, id)`` points to its case for
as long (from its arrival). A stream entry id needs no index: the events stream keeps the entry,
which names its case.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from redis.client import Pipeline

from settings import keys
from thalamus.errors import PermanentError, ThalamusError

if TYPE_CHECKING:
    # Not at run time: core.outcomes imports prometheus-client, which ``casesync trace`` (the
    # reader, through the CLI) must not import before a worker chooses its metrics mode.
    from core.events import CaseChangeEvent
    from core.outcomes import Outcome

# Steps.
ARRIVED = "arrived"
RESCHEDULED = "rescheduled"
OUTCOME = "outcome"

# Why an event went back to the schedule.
RETRY = "retry"
BUSY_CASE = "busyCase"
BREAKER = "breaker"
REDIS_FAULT = "redisFault"

# What reading the case back after a lost answer found.
TOOK_EFFECT = "tookEffect"
NOT_APPLIED = "notApplied"
READ_FAILED = "readFailed"


@dataclass(frozen=True)
class Bounds:
    """How much trace is kept: ``length`` records per case (0: none), for ``ttl`` seconds."""

    length: int = 200
    ttl: float = 86400.0

    @property
    def on(self) -> bool:
        return self.length > 0


#: The settings' defaults.
DEFAULT_BOUNDS = Bounds()


@dataclass(frozen=True)
class Subject:
    """Which event a record is about: its case, stream entry and ``(source, id)``."""

    case_id: int
    entry: str
    source: str | None
    event_id: str | None


@dataclass(frozen=True)
class Attempt:
    """One attempt of an event: its number, when it began, and how it went."""

    number: int
    at: float
    http_status: int | None = None
    #: The casesync error class (``TransientError``, ``PermanentError``...).
    error: str | None = None
    #: The exception under it (``ReadTimeout``, ``ConnectError``...).
    cause: str | None = None
    #: The API's error code of a refusal.
    code: str | None = None
    #: What reading the case back found, when an earlier answer was lost.
    read_back: str | None = None

    def failed(self, error: BaseException) -> Attempt:
        """This attempt, ended by ``error``."""
        cause = error.__cause__
        return replace(
            self,
            http_status=error.http_status if isinstance(error, ThalamusError) else None,
            error=type(error).__name__,
            cause=None if cause is None else type(cause).__name__,
            code=error.code if isinstance(error, PermanentError) else None,
        )

    def fields(self) -> dict[str, Any]:
        return _present(
            {
                "attempt": self.number,
                "at": round(self.at, 3),
                "httpStatus": self.http_status,
                "error": self.error,
                "cause": self.cause,
                "code": self.code,
                "readBack": self.read_back,
            }
        )


@dataclass(frozen=True)
class Record:
    """One step of one event, as the case's trace keeps it."""

    subject: Subject
    step: str
    at: float
    details: dict[str, Any]

    def text(self) -> str:
        body = {
            "t": round(self.at, 3),
            "step": self.step,
            "entry": self.subject.entry,
            "source": self.subject.source,
            "id": self.subject.event_id,
            **self.details,
        }
        return json.dumps(_present(body), separators=(",", ":"), ensure_ascii=False)


def arrived(entry: str, event: CaseChangeEvent, at: float) -> Record:
    """Intake took the entry of ``event``."""
    data = event.data
    subject = Subject(event.case_id, entry, event.source, event.id)
    details = {
        "eventTime": event.time.isoformat().replace("+00:00", "Z"),
        "comments": len(data.comments or []),
        "caseDataFields": len(data.caseData or {}),
    }
    return Record(subject, ARRIVED, at, details)


def arrived_invalid(subject: Subject, at: float) -> Record:
    """Intake took an entry that it dead-lettered at once (its outcome is recorded apart)."""
    return Record(subject, ARRIVED, at, {"valid": False})


def rescheduled(
    subject: Subject,
    at: float,
    *,
    why: str,
    delay: float,
    tried: Attempt | None = None,
    error: str | None = None,
) -> Record:
    """The event went back to the schedule for ``delay`` seconds, because of ``why``."""
    details: dict[str, Any] = {"why": why, "delay": round(delay, 3), "error": error}
    if tried is not None:
        details["tried"] = tried.fields()
    return Record(subject, RESCHEDULED, at, _present(details))


def outcome(
    subject: Subject,
    at: float,
    ended: Outcome,
    *,
    superseded_by: str = "",
    tried: Attempt | None = None,
) -> Record:
    """The event's outcome, and the attempt that ended it if one did."""
    details: dict[str, Any] = {
        "outcome": ended.type.removeprefix("casesync.update."),
        "attempts": ended.attempts,
        "reason": ended.reason,
        "httpStatus": ended.http_status,
        "supersededBy": superseded_by or None,
    }
    if tried is not None:
        details["tried"] = tried.fields()
    return Record(subject, OUTCOME, at, _present(details))


def subject_of(ended: Outcome, entry: str) -> Subject | None:
    """The subject of an outcome's records; None when the event names no case."""
    if ended.case_id is None:
        return None
    return Subject(ended.case_id, entry, ended.request_source, ended.request_id)


def case_key(case_id: int) -> str:
    return keys.case_key(keys.TRACE_CASE, case_id)


def event_key(source: str, event_id: str) -> str:
    return keys.event_key(keys.TRACE_EVENT, source, event_id)


def add(pipe: Pipeline, bounds: Bounds, records: list[Record]) -> None:
    """Queue ``records`` into the caller's MULTI: per case one LPUSH, LTRIM and EXPIRE, and the
    index of each event that arrived."""
    if not bounds.on or not records:
        return
    ttl = max(1, int(bounds.ttl))
    texts: dict[int, list[str]] = {}
    for record in records:
        texts.setdefault(record.subject.case_id, []).append(record.text())
        subject = record.subject
        if record.step == ARRIVED and subject.source is not None and subject.event_id is not None:
            pipe.set(event_key(subject.source, subject.event_id), subject.case_id, ex=ttl)
    for case_id, case_texts in texts.items():
        key = case_key(case_id)
        pipe.lpush(key, *case_texts)
        pipe.ltrim(key, 0, bounds.length - 1)
        pipe.expire(key, ttl)


def _present(fields: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}
