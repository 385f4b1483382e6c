"""Incoming case-change events: parse and validate a stream entry (contract §2).

Pure code: a stream entry's fields go in, a :class:`CaseChangeEvent` or an :class:`InvalidEvent`
(with the dead-letter reason and a detail a person can act on) comes out. The clock and the
settings it checks against come in as arguments (``now``, :class:`Limits`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from settings import REPLYTO_PATTERN, keys
from thalamus.models import CaseUpdate

EVENT_TYPE = "thalamus.case.update"
EVENT_FIELD = "event"

INVALID_EVENT = "invalidEvent"
CODE_REQUIRED = "CodeRequired"

Text = Annotated[str, StringConstraints(min_length=1, max_length=1024)]

#: The API's case id is an integer, no larger than a signed 64-bit one in any server we know of:
#: a larger one could only fail there, and how (a 400, or a 500 that is retried and trips the
#: breaker for every worker) would be up to the server.
MAX_CASE_ID = 2**63 - 1
MAX_REPLYTO_LENGTH = 256

#: kombu's Redis transport keeps its unacknowledged tasks in these keys.
BROKER_KEYS = frozenset({"unacked", "unacked_index", "unacked_mutex"})
#: Prefixes of keys no reply stream may take: casesync's private keys, kombu's queue bindings
#: (``_kombu.binding.*``), Celery's default queue and its events (``celery*``, ``celeryev*``).
RESERVED_PREFIXES = (f"{keys.PREFIX}:", "_kombu.", "celery")
#: kombu's mailbox queues (``celery inspect`` and ``control`` replies) end so.
RESERVED_SUFFIX = ".pidbox"

# RFC 3339 date-time (section 5.6; its note allows a space for the T); the offset is required.
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


@dataclass(frozen=True)
class Limits:
    """Bounds on what one event may hold; a breach is dead-lettered naming the limit."""

    max_event_bytes: int = 256 * 1024
    max_comments: int = 100
    max_case_data_fields: int = 200
    #: Seconds an event's ``time`` may lie ahead of the clock (CASESYNC_MAX_CLOCK_SKEW).
    max_clock_skew: float = 300.0
    #: What a ``replyto`` must match in whole (CASESYNC_REPLYTO_PATTERN).
    replyto_pattern: re.Pattern[str] = re.compile(REPLYTO_PATTERN)
    #: casesync's streams, as configured: never a reply stream.
    own_streams: frozenset[str] = frozenset(
        {"casesync:events", "casesync:results", "casesync:dead-letter"}
    )
    #: The Celery task queue, as configured; kombu adds priority suffixes to its name, so no
    #: reply stream may start with it.
    task_queue: str = "casesync"


class InvalidEvent(Exception):
    """An entry that can never be applied; ``reason`` is its dead-letter reason."""

    def __init__(self, reason: str, detail: str, *, raw: str, partial: dict[str, Any]) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.raw = raw
        #: What could be read of the event (id, source, subject), for the outcome event.
        self.partial = partial


class CaseChange(CaseUpdate):
    """``data`` of an event: the update-case body plus the case id; caseData may be partial."""

    caseInstanceId: StrictInt = Field(gt=0, le=MAX_CASE_ID)

    def update(self) -> CaseUpdate:
        return CaseUpdate.model_validate(self.model_dump(exclude={"caseInstanceId"}))


class CaseChangeEvent(BaseModel):
    """A CloudEvents 1.0 event of type ``thalamus.case.update`` (structured mode)."""

    # Extension attributes are allowed by CloudEvents; they are kept and ignored.
    model_config = ConfigDict(extra="allow", frozen=True)

    specversion: Literal["1.0"]
    id: Text
    source: Text
    type: Literal["thalamus.case.update"]
    time: AwareDatetime
    subject: str | None = None
    datacontenttype: str | None = None
    replyto: (
        Annotated[str, StringConstraints(min_length=1, max_length=MAX_REPLYTO_LENGTH)] | None
    ) = None
    data: CaseChange

    @field_validator("time", mode="before")
    @classmethod
    def _time_is_rfc3339(cls, value: object) -> object:
        # pydantic alone would also take Unix times and times without seconds.
        if not isinstance(value, str) or not _RFC3339.fullmatch(value):
            raise ValueError(f"{value!r} is not an RFC 3339 time such as 2026-11-28T10:15:00Z")
        return value

    @model_validator(mode="after")
    def _subject_names_the_case(self) -> CaseChangeEvent:
        if self.subject is not None and self.subject != str(self.data.caseInstanceId):
            raise ValueError(
                f"subject {self.subject!r} differs from data.caseInstanceId "
                f"{self.data.caseInstanceId}"
            )
        return self

    @property
    def case_id(self) -> int:
        return self.data.caseInstanceId


def parse_entry(
    fields: dict[str, str], limits: Limits = Limits(), *, now: float
) -> CaseChangeEvent:
    """The event of a stream entry, or :class:`InvalidEvent` saying why it cannot be applied.

    ``now`` is the reader's clock (epoch seconds), against which ``time`` is checked.
    """
    raw = fields.get(EVENT_FIELD)
    if raw is None:
        found = ", ".join(sorted(fields)) or "none"
        raise InvalidEvent(
            INVALID_EVENT,
            f"the entry has no '{EVENT_FIELD}' field (fields: {found[:200]})",
            raw=json.dumps(fields)[: limits.max_event_bytes],
            partial={},
        )
    return parse_event(raw, limits, now=now)


def parse_event(raw: str, limits: Limits = Limits(), *, now: float) -> CaseChangeEvent:
    """Validate one event's JSON text against contract §2, the limits and the clock ``now``."""
    try:
        return _parse_event(raw, limits, now)
    except InvalidEvent:
        raise
    except Exception as exc:
        # Whatever upstream sent must end as a dead letter, never as a crashed intake or a task
        # retried for ever.
        raise InvalidEvent(
            INVALID_EVENT,
            f"the event could not be read ({type(exc).__name__}: {str(exc)[:200]})",
            raw=raw,
            partial={},
        ) from exc


def _parse_event(raw: str, limits: Limits, now: float) -> CaseChangeEvent:
    size = len(raw.encode("utf-8", errors="replace"))
    if size > limits.max_event_bytes:
        raise InvalidEvent(
            INVALID_EVENT,
            f"the event is {size} bytes, over the limit of {limits.max_event_bytes} "
            "(CASESYNC_MAX_EVENT_BYTES)",
            raw=raw,
            partial={},
        )
    document = _load_object(raw)
    partial = _identity(document, limits)
    _check_limits(document, limits, raw, partial)
    try:
        event = CaseChangeEvent.model_validate(document)
    except ValidationError as exc:
        raise InvalidEvent(_reason(exc), _describe(exc), raw=raw, partial=partial) from None
    problem = _time_problem(event, limits, now) or (
        event.replyto and replyto_problem(event.replyto, limits)
    )
    if problem:
        raise InvalidEvent(INVALID_EVENT, problem, raw=raw, partial=partial)
    return event


def replyto_problem(name: str, limits: Limits = Limits()) -> str | None:
    """Why ``name`` may not be a reply stream, or None when it may.

    Two rules: a hard one, whatever the settings say (never a key that casesync, Celery or kombu
    uses: writing there once stopped every worker), and ``CASESYNC_REPLYTO_PATTERN``.
    """
    if len(name) > MAX_REPLYTO_LENGTH:
        return f"replyto is {len(name)} characters long, over the limit of {MAX_REPLYTO_LENGTH}"
    if (
        name in limits.own_streams
        or name in BROKER_KEYS
        or name.startswith((limits.task_queue, *RESERVED_PREFIXES))
        or name.endswith(RESERVED_SUFFIX)
    ):
        return (
            f"replyto {name!r} names a key that casesync, Celery or kombu uses, which is refused "
            "whatever CASESYNC_REPLYTO_PATTERN says (casesync's streams, names starting with the "
            f"task queue {limits.task_queue!r}, {keys.PREFIX}:*, _kombu.*, unacked, "
            "unacked_index, unacked_mutex, celery*, *.pidbox): name a stream of your own"
        )
    if not limits.replyto_pattern.fullmatch(name):
        return (
            f"replyto {name!r} does not match CASESYNC_REPLYTO_PATTERN "
            f"{limits.replyto_pattern.pattern!r}"
        )
    return None


def _time_problem(event: CaseChangeEvent, limits: Limits, now: float) -> str | None:
    """Why ``time`` cannot be taken: a change from the future would supersede every real one."""
    ahead = event.time.timestamp() - now
    if ahead <= limits.max_clock_skew:
        return None
    return (
        f"time {event.time.isoformat()} is {ahead:.0f} s ahead of casesync's clock, over the "
        f"limit of {limits.max_clock_skew:g} s (CASESYNC_MAX_CLOCK_SKEW)"
    )


def identity(raw: str, limits: Limits = Limits()) -> dict[str, Any]:
    """What can be read of an event's identity from its JSON text, however broken."""
    try:
        return _identity(_load_object(raw), limits)
    except InvalidEvent:
        return {}


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON number")


def _load_object(raw: str) -> dict[str, Any]:
    """The event's JSON object, or :class:`InvalidEvent` saying why the text is not one."""
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidEvent(
            INVALID_EVENT, "the event is not valid UTF-8 text", raw=raw, partial={}
        ) from None
    try:
        # Nesting deeper than the recursion limit stops the parser at once (RecursionError);
        # an integer of more than 4,300 digits is a ValueError. NaN and Infinity are not JSON:
        # Python takes them, and a NaN in caseData would reach Thalamus as null.
        document = json.loads(raw, parse_constant=_not_json)
    except (ValueError, RecursionError) as exc:
        raise InvalidEvent(
            INVALID_EVENT, f"the event is not JSON: {exc}", raw=raw, partial={}
        ) from None
    if not isinstance(document, dict):
        raise InvalidEvent(
            INVALID_EVENT,
            f"the event is a JSON {type(document).__name__}, not an object",
            raw=raw,
            partial={},
        )
    return document


def _identity(document: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """What can be read of an event's identity, even from an invalid one.

    ``replyto`` only when it may be written to: an invalid event's outcome goes there too.
    """
    data = document.get("data")
    case_id = data.get("caseInstanceId") if isinstance(data, dict) else None
    replyto = document.get("replyto")
    return {
        "id": document.get("id") if isinstance(document.get("id"), str) else None,
        "source": document.get("source") if isinstance(document.get("source"), str) else None,
        "caseInstanceId": case_id if type(case_id) is int else None,
        "replyto": replyto
        if isinstance(replyto, str) and not replyto_problem(replyto, limits)
        else None,
    }


def _check_limits(
    document: dict[str, Any], limits: Limits, raw: str, partial: dict[str, Any]
) -> None:
    data = document.get("data")
    if not isinstance(data, dict):
        return
    for key, limit, variable in (
        ("comments", limits.max_comments, "CASESYNC_MAX_COMMENTS"),
        ("caseData", limits.max_case_data_fields, "CASESYNC_MAX_CASE_DATA_FIELDS"),
    ):
        value = data.get(key)
        if isinstance(value, (list, dict)) and len(value) > limit:
            raise InvalidEvent(
                INVALID_EVENT,
                f"data.{key} has {len(value)} entries, over the limit of {limit} ({variable})",
                raw=raw,
                partial=partial,
            )


def _reason(exc: ValidationError) -> str:
    """``CodeRequired`` for a missing, null or empty category or type code, else invalidEvent."""
    for error in exc.errors():
        names_a_code = error["loc"] in (("data", "categoryCode"), ("data", "typeCode"))
        absent = error["type"] in ("missing", "string_too_short") or error["input"] is None
        if names_a_code and absent:
            return CODE_REQUIRED
    return INVALID_EVENT


def _describe(exc: ValidationError, most: int = 5) -> str:
    parts = []
    for error in exc.errors()[:most]:
        where = ".".join(str(part) for part in error["loc"]) or "event"
        parts.append(f"{where}: {error['msg']}")
    more = exc.error_count() - most
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)
