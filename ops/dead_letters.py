"""The dead-letter stream for operators: read, count, replay and purge dead letters (contract §5).

Plain code over a Redis client that decodes responses (``tasks.runtime.redis_client``), used by
``casesync dlq`` and ``casesync status``. A dead letter is read back as :class:`DeadLetter`;
replay re-validates its original event and moves it back to the events stream, where intake
treats it as any new entry.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import islice
from typing import Any, TypeVar

import redis

from core.events import EVENT_FIELD, InvalidEvent, Limits, parse_event
from ops.stream_ids import id_after, id_before

#: Entries read per XRANGE call while scanning the stream.
PAGE = 500

# KEYS: dead-letter stream, events stream. ARGV: dead-letter id, event field name.
# Moves the original event, byte for byte, back to the events stream; the dead letter is deleted
# only once that XADD succeeded (a failing XADD aborts the script before the XDEL), and with no
# other command in between. Returns the new entry id, or false when the dead letter is gone
# (replayed or purged by someone else meanwhile), so no event is replayed twice.
_REPLAY = """
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then
  return false
end
local fields = found[1][2]
for i = 1, #fields, 2 do
  if fields[i] == ARGV[2] then
    local added = redis.call('XADD', KEYS[2], '*', ARGV[2], fields[i + 1])
    redis.call('XDEL', KEYS[1], ARGV[1])
    return added
  end
end
return false
"""


@dataclass(frozen=True)
class DeadLetter:
    """One entry of the dead-letter stream, as written by :func:`core.outcomes.add_dead_letter`."""

    id: str
    event: str
    reason: str
    detail: str
    attempts: int
    http_status: int | None
    errors: Any
    first_attempt_at: str
    dead_lettered_at: str
    request_id: str
    request_source: str
    case_id: int | None
    #: The id the event had on the events stream when it was dead-lettered.
    entry_id: str

    @classmethod
    def from_entry(cls, entry_id: str, fields: dict[str, str]) -> DeadLetter:
        # Read leniently: an entry written by an older or newer casesync still lists.
        return cls(
            id=entry_id,
            event=fields.get(EVENT_FIELD, ""),
            reason=fields.get("reason", "unknown"),
            detail=fields.get("detail", ""),
            attempts=_int_or_none(fields.get("attempts")) or 0,
            http_status=_int_or_none(fields.get("httpStatus")),
            errors=_json_or_text(fields.get("errors", "{}")),
            first_attempt_at=fields.get("firstAttemptAt", ""),
            dead_lettered_at=fields.get("deadLetteredAt", ""),
            request_id=fields.get("requestId", ""),
            request_source=fields.get("requestSource", ""),
            case_id=_int_or_none(fields.get("caseInstanceId")),
            entry_id=fields.get("entryId", ""),
        )

    def as_json(self) -> dict[str, Any]:
        """The dead letter under the stream's own field names, ``event`` as its original text."""
        return {
            "id": self.id,
            "event": self.event,
            "reason": self.reason,
            "detail": self.detail,
            "attempts": self.attempts,
            "httpStatus": self.http_status,
            "errors": self.errors,
            "firstAttemptAt": self.first_attempt_at,
            "deadLetteredAt": self.dead_lettered_at,
            "requestId": self.request_id,
            "requestSource": self.request_source,
            "caseInstanceId": self.case_id,
            "entryId": self.entry_id,
        }


def scan(
    client: redis.Redis,
    stream: str,
    *,
    since: float | None = None,
    until: str = "+",
    reason: str | None = None,
    page: int = PAGE,
) -> Iterator[DeadLetter]:
    """Dead letters of ``reason``, oldest first, from ``since`` (epoch s) to the id ``until``."""
    start = "-" if since is None else f"{int(since * 1000)}-0"
    while True:
        entries = _entries(client.xrange(stream, min=start, max=until, count=page))
        for entry_id, fields in entries:
            letter = DeadLetter.from_entry(entry_id, fields)
            if reason is None or letter.reason == reason:
                yield letter
        if len(entries) < page:
            return
        start = id_after(entries[-1][0])


def newest_id(client: redis.Redis, stream: str) -> str | None:
    """The id of the newest dead letter, or None when there is none.

    Bulk operations stop there, at what was in the stream when they started: an event that
    fails again while ``replay --all`` runs must not be replayed again by the same run.
    """
    entries = _entries(client.xrevrange(stream, max="+", min="-", count=1))
    return entries[0][0] if entries else None


def fetch(
    client: redis.Redis, stream: str, ids: Sequence[str]
) -> tuple[list[DeadLetter], list[str]]:
    """The dead letters of ``ids`` in the order given, and the ids that are not in the stream."""
    pipe = client.pipeline(transaction=False)
    for entry_id in ids:
        pipe.xrange(stream, min=entry_id, max=entry_id)
    found: list[DeadLetter] = []
    missing: list[str] = []
    for entry_id, reply in zip(ids, pipe.execute(), strict=True):
        entries = _entries(reply)
        if entries:
            found.append(DeadLetter.from_entry(*entries[0]))
        else:
            missing.append(entry_id)
    return found, missing


def count_by_reason(client: redis.Redis, stream: str, *, most: int) -> tuple[Counter[str], bool]:
    """Dead letters per reason among the newest ``most``; True when older ones were left out."""
    counts: Counter[str] = Counter()
    end = "+"
    while sum(counts.values()) < most:
        want = min(PAGE, most - sum(counts.values()))
        entries = _entries(client.xrevrange(stream, max=end, min="-", count=want))
        counts.update(fields.get("reason", "unknown") for _, fields in entries)
        if len(entries) < want:
            return counts, False
        end = id_before(entries[-1][0])
    # Exactly ``most`` counted: there are more only if an older entry exists.
    return counts, bool(client.xrevrange(stream, max=end, min="-", count=1))


def delete(client: redis.Redis, stream: str, ids: Sequence[str]) -> list[str]:
    """Delete the dead letters of ``ids``; the ids that were not in the stream."""
    pipe = client.pipeline(transaction=False)
    for entry_id in ids:
        pipe.xdel(stream, entry_id)
    removed = pipe.execute()
    return [entry_id for entry_id, count in zip(ids, removed, strict=True) if not count]


def delete_all(client: redis.Redis, stream: str, *, reason: str | None = None) -> int:
    """Delete every dead letter (of ``reason``) there is now; how many were deleted."""
    until = newest_id(client, stream)
    if until is None:
        return 0
    deleted = 0
    for batch in batched(scan(client, stream, until=until, reason=reason), PAGE):
        deleted += int(client.xdel(stream, *[letter.id for letter in batch]))
    return deleted


class Verdict(StrEnum):
    """What replay did with one dead letter."""

    REPLAYED = "replayed"
    WOULD_REPLAY = "wouldReplay"
    REFUSED = "refused"
    GONE = "gone"


@dataclass(frozen=True)
class Replayed:
    letter: DeadLetter
    verdict: Verdict
    #: Why a replay was refused; empty otherwise.
    detail: str = ""
    #: The event's new id on the events stream.
    new_entry_id: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.letter.id,
            "result": str(self.verdict),
            "detail": self.detail,
            "newEntryId": self.new_entry_id,
            "reason": self.letter.reason,
            "requestId": self.letter.request_id,
            "requestSource": self.letter.request_source,
            "caseInstanceId": self.letter.case_id,
        }


@dataclass(frozen=True)
class Pacing:
    """How replay yields to live traffic: batches, and a bound on the workers' backlog."""

    batch: int = 100
    max_backlog: int = 1000
    #: Longest wait for the backlog to fall below the bound, before replay gives up.
    max_wait: float = 300.0
    poll: float = 1.0


class Backlogged(Exception):
    """Replay stopped: the workers' backlog stayed above the bound for the whole wait."""

    def __init__(self, backlog: int, pacing: Pacing) -> None:
        super().__init__(
            f"the events stream's backlog ({backlog} entries) stayed above {pacing.max_backlog} "
            f"for {pacing.max_wait:g} s"
        )
        self.backlog = backlog


@dataclass(frozen=True)
class ReplayTarget:
    dead_letter_stream: str
    events_stream: str
    limits: Limits


def replay(
    client: redis.Redis,
    letters: Iterable[DeadLetter],
    target: ReplayTarget,
    *,
    backlog: Callable[[], int],
    pacing: Pacing = Pacing(),
    dry_run: bool = False,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
) -> Iterator[Replayed]:
    """Replay each dead letter whose event is valid now; refuse the others and keep them.

    Before each batch, waits while ``backlog()`` (entries the workers have not handed on) is over
    the bound, so a large replay does not starve live traffic; raises :class:`Backlogged` when
    it stays over for ``pacing.max_wait``. A dry run changes nothing and does not wait.
    """
    move = client.register_script(_REPLAY)
    for batch in batched(letters, pacing.batch):
        now = clock()
        checked = [_revalidate(letter, target.limits, now) for letter in batch]
        if dry_run:
            yield from checked
            continue
        _wait_for_room(backlog, pacing, sleep)
        pipe = client.pipeline(transaction=False)
        valid = [item for item in checked if item.verdict is Verdict.WOULD_REPLAY]
        for item in valid:
            move(
                keys=[target.dead_letter_stream, target.events_stream],
                args=[item.letter.id, EVENT_FIELD],
                client=pipe,
            )
        moved = iter(pipe.execute())
        for item in checked:
            yield _moved(item, next(moved)) if item.verdict is Verdict.WOULD_REPLAY else item


def _revalidate(letter: DeadLetter, limits: Limits, now: float) -> Replayed:
    try:
        parse_event(letter.event, limits, now=now)
    except InvalidEvent as invalid:
        return Replayed(letter, Verdict.REFUSED, f"{invalid.reason}: {invalid.detail}")
    return Replayed(letter, Verdict.WOULD_REPLAY)


def _moved(item: Replayed, new_id: Any) -> Replayed:
    if not new_id:
        return Replayed(item.letter, Verdict.GONE, "no longer in the dead-letter stream")
    return Replayed(item.letter, Verdict.REPLAYED, new_entry_id=str(new_id))


def _wait_for_room(
    backlog: Callable[[], int], pacing: Pacing, sleep: Callable[[float], None]
) -> None:
    waited = 0.0
    current = backlog()
    while current > pacing.max_backlog:
        if waited >= pacing.max_wait:
            raise Backlogged(current, pacing)
        sleep(pacing.poll)
        waited += pacing.poll
        current = backlog()


T = TypeVar("T")


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (``itertools.batched`` arrives with Python 3.12)."""
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def _entries(reply: Any) -> list[tuple[str, dict[str, str]]]:
    """XRANGE's reply as (id, fields) pairs of text."""
    return [
        (str(entry_id), {str(k): str(v) for k, v in (fields or {}).items()})
        for entry_id, fields in reply or []
    ]


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
