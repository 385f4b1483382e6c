"""What casesync did with the events of a case, read back from their trace (``casesync trace``).

The records :mod:`core.trace` writes become a timeline: one :class:`Step` per arrival, attempt,
wait and outcome, oldest first. An outcome that an attempt ended is stored as one record and
read as two steps (the attempt, then the outcome). Records are read leniently, so a trace
written by an older or newer casesync still reads.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import redis

from core import trace
from core.events import EVENT_FIELD, identity
from core.guards import order_key_parts

ATTEMPT = "attempt"
WAIT = "wait"


@dataclass(frozen=True)
class Step:
    """One row of a timeline: what happened to one event at one moment."""

    at: float
    entry: str
    source: str | None
    event_id: str | None
    #: arrived, attempt, wait or outcome.
    step: str
    details: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {
            "time": iso(self.at),
            "entry": self.entry,
            "source": self.source,
            "id": self.event_id,
            "step": self.step,
            **self.details,
        }


@dataclass(frozen=True)
class EventSummary:
    """One event of a timeline (one stream entry), and how it ended so far."""

    entry: str
    source: str | None
    event_id: str | None
    event_time: str | None
    outcome: str | None
    reason: str | None
    attempts: int

    def as_json(self) -> dict[str, Any]:
        return {
            "entry": self.entry,
            "source": self.source,
            "id": self.event_id,
            "eventTime": self.event_time,
            "outcome": self.outcome,
            "reason": self.reason,
            "attempts": self.attempts,
        }


@dataclass(frozen=True)
class Timeline:
    """The steps of a case's events, oldest first."""

    case_id: int
    steps: list[Step]

    def events(self) -> list[EventSummary]:
        """Each event of the timeline, in the order it first appears."""
        entries = list(dict.fromkeys(step.entry for step in self.steps))
        return [self._summary(entry) for entry in entries]

    def as_json(self) -> dict[str, Any]:
        return {
            "case": self.case_id,
            "events": [event.as_json() for event in self.events()],
            "timeline": [step.as_json() for step in self.steps],
        }

    def _summary(self, entry: str) -> EventSummary:
        steps = [step for step in self.steps if step.entry == entry]
        ended = [step for step in steps if step.step == trace.OUTCOME]
        last = ended[-1].details if ended else {}
        arrived = [step.details for step in steps if step.step == trace.ARRIVED]
        tries = [step.details.get("attempt", 0) for step in steps if step.step == ATTEMPT]
        return EventSummary(
            entry=entry,
            source=steps[0].source,
            event_id=steps[0].event_id,
            event_time=arrived[0].get("eventTime") if arrived else None,
            outcome=last.get("outcome"),
            reason=last.get("reason"),
            attempts=int(last.get("attempts", max(tries, default=0))),
        )


def case_timeline(client: redis.Redis, case_id: int) -> Timeline:
    """Every step of the case's events that its trace still holds."""
    raw: Any = client.lrange(trace.case_key(case_id), 0, -1)
    records = [record for text in reversed(raw) if (record := _record(text)) is not None]
    steps = [step for record in records for step in _steps(record)]
    # Stable: steps written together keep the order they were written in.
    steps.sort(key=lambda step: step.at)
    return Timeline(case_id, steps)


def event_timeline(client: redis.Redis, source: str, event_id: str) -> Timeline | None:
    """The steps of the event ``(source, id)`` (every entry of it: a replay is one more);
    None when its trace is gone or was never written."""
    found = client.get(trace.event_key(source, event_id))
    if found is None:
        return None
    timeline = case_timeline(client, int(str(found)))
    steps = [s for s in timeline.steps if (s.source, s.event_id) == (source, event_id)]
    return Timeline(timeline.case_id, steps) if steps else None


def entry_timeline(client: redis.Redis, events_stream: str, entry_id: str) -> Timeline | None:
    """The steps of the events stream's entry ``entry_id``; None when the stream no longer holds
    the entry, it names no case, or its trace is gone."""
    entries: Any = client.xrange(events_stream, min=entry_id, max=entry_id)
    if not entries:
        return None
    case_id = identity(entries[0][1].get(EVENT_FIELD, "")).get("caseInstanceId")
    if case_id is None:
        return None
    timeline = case_timeline(client, case_id)
    steps = [step for step in timeline.steps if step.entry == entry_id]
    return Timeline(case_id, steps) if steps else None


def iso(moment: float) -> str:
    stamp = dt.datetime.fromtimestamp(moment, tz=dt.UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _record(text: str) -> dict[str, Any] | None:
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("t"), (int, float)):
        return None
    return record


def _steps(record: dict[str, Any]) -> list[Step]:
    """The timeline steps of one stored record."""
    kind, at, tried = record.get("step"), float(record["t"]), record.get("tried")
    skip = {"t", "step", "entry", "source", "id", "tried"}
    details = {key: value for key, value in record.items() if key not in skip}

    def step(name: str, moment: float, fields: dict[str, Any]) -> Step:
        entry, source, event_id = (
            str(record.get("entry", "")),
            record.get("source"),
            record.get("id"),
        )
        return Step(moment, entry, source, event_id, name, fields)

    if kind == trace.ARRIVED:
        return [step(trace.ARRIVED, at, details)]
    if kind == trace.RESCHEDULED:
        if not isinstance(tried, dict):
            return [step(WAIT, at, details)]
        # The attempt failed and is tried again: one step, saying when and why.
        then = {"then": details.get("why"), "delay": details.get("delay")}
        return [step(ATTEMPT, _began(tried, at), {**_attempt(tried), **then})]
    if kind != trace.OUTCOME:
        return []
    if "supersededBy" in details:
        details["supersededBy"] = _winner(str(details["supersededBy"]))
    ended = step(trace.OUTCOME, at, details)
    if not isinstance(tried, dict):
        return [ended]
    then = {"then": details.get("outcome")}
    return [step(ATTEMPT, _began(tried, at), {**_attempt(tried), **then}), ended]


def _began(tried: dict[str, Any], otherwise: float) -> float:
    at = tried.get("at")
    return float(at) if isinstance(at, (int, float)) else otherwise


def _attempt(tried: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in tried.items() if key != "at"}


def _winner(key: str) -> dict[str, Any]:
    """The newer change an order key names: its event time and stream entry."""
    try:
        moment, entry = order_key_parts(key)
    except ValueError:
        return {"orderKey": key}
    # As the event's own time reads in its arrival: seconds, finer only when it has them.
    time = moment.isoformat().replace("+00:00", "Z")
    return {"orderKey": key, "eventTime": time, "entry": entry}
