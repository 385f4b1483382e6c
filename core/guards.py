"""The Redis state that makes each event's effect happen once and in order, for a whole batch.

- the ledger: ``(source, id)`` of every event applied or superseded, so a duplicate is noticed;
- the per-case lock: one task at a time updates a case, across all workers; it expires if its
  holder dies (a running task renews it, see :class:`core.schedule.LeaseKeeper`);
- the order key: the newest change applied to a case, so an older one is superseded;
- the attempt mark: set when a task takes an event's case, cleared once its outcome is known, so
  a later task knows an earlier attempt's result is unknown and reads the case before trying.

Taking the locks of every case of a batch and reading the rest is one Lua script (one round
trip); giving them back is queued into the MULTI that writes the outcomes, so an outcome, the
ledger and the order key change together.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.client import Pipeline
from redis.exceptions import NoScriptError

from core.replicas import ReplicaWait
from settings import keys

# KEYS: breaker, jobs, then lock and order key of each case, then ledger and mark of each event.
# ARGV: token, lock ttl ms, mark ttl s, number of cases, events of each case, entry id of each
# event. Returns {'breaker', reason} while the breaker is open. Else {'ok', then per case: held
# (1/0), its order key, then per event: done (1/0: no job left), ledger, earlier mark, since}.
# For each event of a case it holds and not done, it sets the mark to `since`: when the oldest
# attempt whose result is unknown began (an earlier mark's), else now (Redis clock, ms).
_ACQUIRE = """
local breaker = redis.call('GET', KEYS[1])
if breaker then
  return {'breaker', breaker}
end
local t = redis.call('TIME')
local now = tostring(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local cases = tonumber(ARGV[4])
local reply, e = {'ok'}, 0
for c = 1, cases do
  local held = redis.call('SET', KEYS[1 + 2 * c], ARGV[1], 'NX', 'PX', ARGV[2])
  table.insert(reply, held and 1 or 0)
  table.insert(reply, redis.call('GET', KEYS[2 + 2 * c]) or '')
  for _ = 1, tonumber(ARGV[4 + c]) do
    e = e + 1
    local ledger, mark = KEYS[1 + 2 * cases + 2 * e], KEYS[2 + 2 * cases + 2 * e]
    local done = redis.call('HEXISTS', KEYS[2], ARGV[4 + cases + e]) == 0
    local found, since = '', now
    if held and not done then
      found = redis.call('GET', mark) or ''
      since = string.match(found, '(%d+)$') or now
      redis.call('SET', mark, since, 'EX', ARGV[3])
    end
    table.insert(reply, done and 1 or 0)
    table.insert(reply, (held and not done and redis.call('GET', ledger)) or '')
    table.insert(reply, found)
    table.insert(reply, since)
  end
end
return reply
"""

# KEYS: lock, order key. ARGV: token, order key ('' to leave it), ttl seconds of the order key.
# Advances the order key only forwards, then drops the lock if this holder still has it.
_RELEASE = """
if ARGV[2] ~= '' then
  local current = redis.call('GET', KEYS[2])
  if (not current) or current < ARGV[2] then
    redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
  end
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def order_key(time: dt.datetime, entry_id: str) -> str:
    """Sortable text of (event time, stream position): the newer change has the greater key."""
    micros = int(time.timestamp() * 1_000_000)
    millis, _, seq = entry_id.partition("-")
    return f"{micros:020d}-{int(millis or 0):015d}-{int(seq or 0):010d}"


def lock_key(case_id: int) -> str:
    return keys.case_key(keys.CASE_LOCK, case_id)


def order_key_parts(key: str) -> tuple[dt.datetime, str]:
    """The event time and stream entry id an :func:`order_key` was made of."""
    micros, millis, seq = key.split("-")
    moment = dt.datetime.fromtimestamp(int(micros) / 1_000_000, tz=dt.UTC)
    return moment, f"{int(millis)}-{int(seq)}"


@dataclass(frozen=True)
class EventKeys:
    """An event's guard keys, and the identity they were made of."""

    ledger: str
    mark: str
    entry_id: str
    source: str
    event_id: str

    @classmethod
    def of(cls, source: str, event_id: str, entry_id: str) -> EventKeys:
        return cls(
            ledger=keys.event_key(keys.LEDGER, source, event_id),
            mark=keys.event_key(keys.ATTEMPT_MARK, source, event_id),
            entry_id=entry_id,
            source=source,
            event_id=event_id,
        )


@dataclass(frozen=True)
class EventState:
    """What a task learnt of one event when it took the event's case."""

    #: The entry's outcome is already written (a task delivered twice ends here).
    done: bool
    ledger: str  # '' when the event was never applied
    #: '' when no earlier attempt left its result unknown.
    mark: str
    #: When the oldest attempt whose result is not known began: this one, or an earlier one
    #: that died or lost its answer (Redis clock, epoch ms).
    since_ms: int

    @property
    def outcome_unknown(self) -> bool:
        return self.mark != ""


@dataclass(frozen=True)
class CaseHold:
    """A case of the batch: whether this task holds its lock, and its events' states."""

    case_id: int
    held: bool
    newest: str  # '' when no change of the case is recorded
    events: list[EventState]


@dataclass(frozen=True)
class BreakerOpen:
    """The circuit breaker is open: nothing of the batch may be tried now."""

    reason: str


class Guards:
    """Locks, ledger, order keys and attempt marks, over one Redis client."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        lock_ttl: float,
        ledger_ttl: float,
        replicas: ReplicaWait | None = None,
    ) -> None:
        self._redis = client
        self._replicas = replicas
        self._lock_ttl_ms = int(lock_ttl * 1000)
        self._ledger_ttl = int(ledger_ttl)
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)

    def acquire(
        self, cases: Sequence[tuple[int, Sequence[EventKeys]]], token: str
    ) -> list[CaseHold] | BreakerOpen:
        """Take each case's lock unless another task holds it, and read its events' state."""
        events = [ek for _, group in cases for ek in group]
        reply = self._acquire_confirmed(
            [
                keys.BREAKER_OPEN,
                keys.JOBS,
                *(key for case_id, _ in cases for key in _case_keys(case_id)),
                *(key for ek in events for key in (ek.ledger, ek.mark)),
            ],
            [
                token,
                self._lock_ttl_ms,
                self._ledger_ttl,
                len(cases),
                *(len(group) for _, group in cases),
                *(ek.entry_id for ek in events),
            ],
        )
        if _text(reply[0]) == "breaker":
            return BreakerOpen(_text(reply[1]))
        return _holds(cases, [_text(item) for item in reply[1:]])

    def _acquire_confirmed(self, script_keys: list[str], args: list[Any]) -> Any:
        """The acquire script's reply, its marks confirmed by replicas when that is due.

        WAIT counts the writes of its own connection, so it follows the script in one pipeline:
        the same connection, and no round trip more than the wait itself.
        """
        if self._replicas is None or not self._replicas.due():
            return self._acquire(keys=script_keys, args=args)
        reply, confirmed = self._acquire_then_wait(self._replicas, script_keys, args)
        if isinstance(reply, NoScriptError):
            # A server that has not run it yet (a fresh primary): it wrote nothing.
            self._redis.script_load(self._acquire.script)
            reply, confirmed = self._acquire_then_wait(self._replicas, script_keys, args)
        if isinstance(reply, Exception):
            raise reply
        self._replicas.judge(confirmed)
        return reply

    def _acquire_then_wait(
        self, replicas: ReplicaWait, script_keys: list[str], args: list[Any]
    ) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        # EVALSHA itself: a Script would ask SCRIPT EXISTS first, a round trip more.
        pipe.evalsha(self._acquire.sha, len(script_keys), *script_keys, *args)
        replicas.add(pipe)
        return pipe.execute(raise_on_error=False)

    def add_event_end(
        self, pipe: Pipeline, ek: EventKeys, *, ledger_value: str | None, mark_since: int | None
    ) -> None:
        """Queue an event's end into the outcome's MULTI: its ledger entry and its mark.

        ``mark_since`` keeps the mark (an attempt's result is still unknown, so the next one
        reads the case first); None clears it.
        """
        if ledger_value is not None:
            pipe.set(ek.ledger, ledger_value, ex=self._ledger_ttl)
        if mark_since is None:
            pipe.delete(ek.mark)
        else:
            pipe.set(ek.mark, str(mark_since), ex=self._ledger_ttl)

    def add_release(self, pipe: Pipeline, case_id: int, token: str, newest: str) -> None:
        """Queue the release of a case's lock, advancing its order key to ``newest``."""
        self._release(
            keys=list(_case_keys(case_id)), args=[token, newest, self._ledger_ttl], client=pipe
        )

    def release(self, locks: set[tuple[str, str]]) -> None:
        """Free the case ``locks`` (key, token) this holder still owns, leaving order keys."""
        if not locks:
            return
        pipe = self._redis.pipeline(transaction=False)
        for key, token in locks:
            self._release(keys=[key, ""], args=[token, "", self._ledger_ttl], client=pipe)
        pipe.execute()


def _case_keys(case_id: int) -> tuple[str, str]:
    return lock_key(case_id), keys.case_key(keys.CASE_NEWEST, case_id)


def _holds(cases: Sequence[tuple[int, Sequence[EventKeys]]], flat: list[str]) -> list[CaseHold]:
    holds, at = [], 0
    for case_id, group in cases:
        held, newest = flat[at] == "1", flat[at + 1]
        at += 2
        states = []
        for _ in group:
            done, ledger, mark, since = flat[at : at + 4]
            states.append(EventState(done == "1", ledger, mark, int(since)))
            at += 4
        holds.append(CaseHold(case_id, held, newest, states))
    return holds


def _text(item: Any) -> str:
    return item.decode() if isinstance(item, bytes) else str(item)
