"""Outcome events (contract §4) and dead letters (contract §5), written to Redis.

Each writer only adds commands to a pipeline; the caller runs it as one MULTI/EXEC together with
whatever else must happen atomically (acknowledging the entry, the ledger, the order key), so an
outcome is never half-written. The copy for the event's ``replyto`` stream is not part of it: the
writers hand it back, and :func:`send_replies` adds it once the MULTI ran.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.client import Pipeline

from core import metrics
from core.events import InvalidEvent
from settings import Settings

log = logging.getLogger("casesync.outcome")

APPLIED = "casesync.update.applied"
SUPERSEDED = "casesync.update.superseded"
DUPLICATE = "casesync.update.duplicate"
DEADLETTERED = "casesync.update.deadlettered"
OUTCOME_TYPES = (APPLIED, SUPERSEDED, DUPLICATE, DEADLETTERED)


@dataclass(frozen=True)
class Streams:
    """Where outcomes go."""

    results: str
    dead_letter: str
    results_max_length: int
    source: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Streams:
        return cls(
            results=settings.results_stream,
            dead_letter=settings.dead_letter_stream,
            results_max_length=settings.results_max_length,
            source=settings.outcome_source,
        )


@dataclass(frozen=True)
class Outcome:
    """How one event ended."""

    type: str
    request_id: str | None
    request_source: str | None
    case_id: int | None
    attempts: int
    replyto: str | None = None
    http_status: int | None = None
    reason: str | None = None
    detail: str | None = None
    errors: dict[str, Any] | None = None
    case: dict[str, Any] | None = None

    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "requestId": self.request_id,
            "requestSource": self.request_source,
            "caseInstanceId": self.case_id,
            "attempts": self.attempts,
        }
        optional = {
            "httpStatus": self.http_status,
            "reason": self.reason,
            "detail": self.detail,
            "errors": self.errors,
            "case": self.case,
        }
        data.update({key: value for key, value in optional.items() if value is not None})
        return data


@dataclass(frozen=True)
class Reply:
    """An outcome event's copy for the stream its event named in ``replyto``."""

    stream: str
    payload: str
    request_source: str | None
    request_id: str | None


@dataclass(frozen=True)
class DeadLetterRecord:
    """What the dead-letter stream keeps of an event besides its original JSON."""

    raw_event: str
    first_attempt_at: float | None
    entry_id: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


def of_invalid(invalid: InvalidEvent, attempts: int = 0) -> Outcome:
    """The dead-letter outcome of an event that failed validation, naming what could be read."""
    return Outcome(
        type=DEADLETTERED,
        request_id=invalid.partial.get("id"),
        request_source=invalid.partial.get("source"),
        case_id=invalid.partial.get("caseInstanceId"),
        attempts=attempts,
        replyto=invalid.partial.get("replyto"),
        reason=invalid.reason,
        detail=invalid.detail,
    )


def outcome_event(outcome: Outcome, source: str, now: float) -> dict[str, Any]:
    """The CloudEvents 1.0 outcome event."""
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": source,
        "type": outcome.type,
        "time": iso_time(now),
        "datacontenttype": "application/json",
        "data": outcome.data(),
    }
    if outcome.case_id is not None:
        event["subject"] = str(outcome.case_id)
    return event


def add_outcome(pipe: Pipeline, streams: Streams, outcome: Outcome, now: float) -> list[Reply]:
    """Queue the outcome event on the results stream; the copy for ``replyto``, if the event
    named one, is returned for :func:`send_replies` once the pipeline ran."""
    payload = json.dumps(outcome_event(outcome, streams.source, now), separators=(",", ":"))
    pipe.xadd(
        streams.results,
        {"event": payload},
        maxlen=streams.results_max_length,
        approximate=True,
    )
    if not outcome.replyto:
        return []
    return [Reply(outcome.replyto, payload, outcome.request_source, outcome.request_id)]


def send_replies(client: redis.Redis, streams: Streams, replies: Sequence[Reply]) -> int:
    """Add each outcome's copy to its ``replyto`` stream; the number that could not be added.

    Never raises: each failure is counted (``casesync_reply_failures_total``) and logged.
    """
    if not replies:
        return 0
    # The results stream, written in the caller's MULTI, is the record of an outcome; the copy
    # on replyto is best-effort. So it goes after that MULTI, in a pipeline of its own whose
    # errors are collected, not raised: a replyto key that is not a stream (WRONGTYPE) or cannot
    # be written must neither undo nor hold up the outcome, nor send the event round a retry.
    pipe = client.pipeline(transaction=False)
    for reply in replies:
        pipe.xadd(
            reply.stream,
            {"event": reply.payload},
            maxlen=streams.results_max_length,
            approximate=True,
        )
    try:
        results: list[Any] = pipe.execute(raise_on_error=False)
    except redis.RedisError as exc:
        results = [exc] * len(replies)
    failed = [(r, e) for r, e in zip(replies, results, strict=True) if isinstance(e, Exception)]
    for reply, error in failed:
        metrics.REPLY_FAILURES.inc()
        # The key and the event's identity only: the payload may hold the case's data.
        log.warning(
            "the outcome of event %s/%s could not be added to its replyto stream %r: %s",
            reply.request_source,
            reply.request_id,
            reply.stream,
            str(error)[:200],
        )
    return len(failed)


def add_dead_letter(
    pipe: Pipeline, streams: Streams, outcome: Outcome, record: DeadLetterRecord, now: float
) -> list[Reply]:
    """Queue the dead letter and its ``deadlettered`` outcome event; as :func:`add_outcome`."""
    fields: dict[str, str | bytes] = {
        # Bytes that were not UTF-8 go back exactly as they came (read with surrogateescape).
        "event": record.raw_event.encode("utf-8", "surrogateescape"),
        "reason": outcome.reason or "unknown",
        "detail": outcome.detail or "",
        "attempts": str(outcome.attempts),
        "httpStatus": "" if outcome.http_status is None else str(outcome.http_status),
        "errors": json.dumps(outcome.errors or {}),
        "firstAttemptAt": ""
        if record.first_attempt_at is None
        else iso_time(record.first_attempt_at),
        "deadLetteredAt": iso_time(now),
        "requestId": outcome.request_id or "",
        "requestSource": outcome.request_source or "",
        "caseInstanceId": "" if outcome.case_id is None else str(outcome.case_id),
        "entryId": record.entry_id or "",
        **record.extra,
    }
    pipe.xadd(streams.dead_letter, {k: _wire(v) for k, v in fields.items()})
    return add_outcome(pipe, streams, outcome, now)


def _wire(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def iso_time(moment: float) -> str:
    stamp = dt.datetime.fromtimestamp(moment, tz=dt.UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def log_outcome(outcome: Outcome) -> None:
    """One line per outcome, the same fields as text and as JSON (CASESYNC_LOG_JSON)."""
    metrics.count_outcome(outcome.type, outcome.reason)
    log.info(
        "outcome %s event=%s/%s case=%s attempts=%d reason=%s",
        outcome.type.removeprefix("casesync.update."),
        outcome.request_source,
        outcome.request_id,
        outcome.case_id,
        outcome.attempts,
        outcome.reason or "-",
        extra={
            "outcome": outcome.type,
            "event_id": outcome.request_id,
            "event_source": outcome.request_source,
            "case_id": outcome.case_id,
            "attempts": outcome.attempts,
            "reason": outcome.reason,
        },
    )
