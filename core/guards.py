"""The Redis state that makes each event's effect happen once and in order (contract §3).

- the ledger: ``(source, id)`` of every event applied or superseded, so a duplicate is noticed;
- the per-case lock: one update in flight per case across all workers, expiring if its holder dies;
- the order key: the newest change applied to a case, so an older one is superseded;
- the attempt mark: set when an attempt takes the lock and cleared once its outcome is written, so
  a redelivered task knows its predecessor's result is unknown and reads the case before trying
  again; it counts the attempts cut off by a dying worker, to catch a poison event.

Taking the lock and reading the rest is one Lua script (one round trip); giving the lock back is
queued into the outcome's MULTI so the outcome, the ledger and the order key change together.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

import redis
from redis.client import Pipeline

from settings import keys

# KEYS: lock, ledger, newest, mark, breaker, entry-done, inflight.
# ARGV: token, lock ttl ms, mark ttl s, entry id, now ms (the in-flight entry is touched, so a
# task that waits for a busy case or an open breaker is not taken for lost).
# Returns {'done'} when the entry's outcome is already written, {'breaker', reason} while the
# breaker is open, nil when another holder has the lock.
# Else marks the attempt as "deaths:since" (since: epoch ms when the first attempt whose result
# is still unknown began), counting one more death in case this holder dies before its outcome is
# written, and returns {ledger, newest, earlier mark, since}.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[6]) == 1 then
  return {'done'}
end
redis.call('ZADD', KEYS[7], 'XX', ARGV[5], ARGV[4])
local breaker = redis.call('GET', KEYS[5])
if breaker then
  return {'breaker', breaker}
end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return false
end
local mark = redis.call('GET', KEYS[4])
local deaths, since = 0, nil
if mark then
  local sep = string.find(mark, ':', 1, true)
  deaths = tonumber(string.sub(mark, 1, sep - 1))
  since = string.sub(mark, sep + 1)
end
if not since then
  local t = redis.call('TIME')
  since = tostring(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
end
redis.call('SET', KEYS[4], (deaths + 1) .. ':' .. since, 'EX', ARGV[3])
return {redis.call('GET', KEYS[2]) or '', redis.call('GET', KEYS[3]) or '', mark or '', since}
"""

# KEYS: lock, newest. ARGV: token, order key ('' to leave it), ttl seconds of the order key.
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


@dataclass(frozen=True)
class EventKeys:
    lock: str
    ledger: str
    newest: str
    mark: str
    entry_done: str
    entry_id: str

    @classmethod
    def of(cls, source: str, event_id: str, case_id: int, entry_id: str) -> EventKeys:
        return cls(
            lock=keys.case_key(keys.CASE_LOCK, case_id),
            ledger=keys.event_key(keys.LEDGER, source, event_id),
            newest=keys.case_key(keys.CASE_NEWEST, case_id),
            mark=keys.event_key(keys.ATTEMPT_MARK, source, event_id),
            entry_done=f"{keys.ENTRY_DONE}:{entry_id}",
            entry_id=entry_id,
        )


@dataclass(frozen=True)
class Done:
    """This stream entry's outcome is already written: a redelivered task ends here."""


@dataclass(frozen=True)
class Busy:
    """The attempt cannot start now: the case is locked, or the breaker is open."""

    why: str
    breaker: bool = False


@dataclass(frozen=True)
class Held:
    """What the lock holder learnt when it took the lock."""

    token: str
    ledger: str  # '' when the event was never applied
    newest: str  # '' when no change of the case is recorded
    #: '' when no earlier attempt left its result unknown; else "deaths:since".
    mark: str
    #: When the oldest attempt whose result is not known began: this one, or an earlier one
    #: that died or lost its answer (Redis clock, epoch ms).
    since_ms: int

    @property
    def outcome_unknown(self) -> bool:
        return self.mark != ""

    @property
    def deaths(self) -> int:
        count = self.mark.partition(":")[0]
        return int(count) if count.isdigit() else 0


class Guards:
    """Lock, ledger, order key and attempt mark, over one Redis client."""

    def __init__(
        self, client: redis.Redis, *, lock_ttl: float, ledger_ttl: float, done_ttl: float
    ) -> None:
        self._redis = client
        self._lock_ttl_ms = int(lock_ttl * 1000)
        self._ledger_ttl = int(ledger_ttl)
        self._done_ttl = int(done_ttl)
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)

    def acquire(self, ek: EventKeys, token: str) -> Held | Busy | Done:
        """Take the case's lock and read the event's state, unless the case or Thalamus is busy."""
        reply: Any = self._acquire(
            keys=[
                ek.lock,
                ek.ledger,
                ek.newest,
                ek.mark,
                keys.BREAKER_OPEN,
                ek.entry_done,
                keys.INFLIGHT,
            ],
            args=[token, self._lock_ttl_ms, self._ledger_ttl, ek.entry_id, _now_ms()],
        )
        if not reply:
            return Busy("another worker is updating this case")
        if len(reply) == 1:
            return Done()
        if len(reply) == 2:
            return Busy(f"circuit breaker open: {_text(reply[1])}", breaker=True)
        ledger, newest, mark, since = (_text(item) for item in reply)
        return Held(token=token, ledger=ledger, newest=newest, mark=mark, since_ms=int(since))

    def add_finish(
        self,
        pipe: Pipeline,
        ek: EventKeys,
        token: str,
        *,
        ledger_value: str | None = None,
        newest: str = "",
        unknown_after: Held | None = None,
        outcome_written: bool = True,
    ) -> None:
        """Queue the end of an attempt into the outcome's MULTI: ledger, order key, mark, lock.

        ``unknown_after`` keeps the mark as it was when this attempt began (no death counted)
        when the PUT's answer was lost, so the next attempt reads the case first; otherwise the
        mark is cleared.
        """
        if outcome_written:
            pipe.set(ek.entry_done, "1", ex=self._done_ttl)
            pipe.zrem(keys.INFLIGHT, ek.entry_id)
        else:
            pipe.zadd(keys.INFLIGHT, {ek.entry_id: _now_ms()}, xx=True)
        if ledger_value is not None:
            pipe.set(ek.ledger, ledger_value, ex=self._ledger_ttl)
        if unknown_after is None:
            pipe.delete(ek.mark)
        else:
            mark = f"{unknown_after.deaths}:{unknown_after.since_ms}"
            pipe.set(ek.mark, mark, ex=self._ledger_ttl)
        self._release(
            keys=[ek.lock, ek.newest], args=[token, newest, self._ledger_ttl], client=pipe
        )


def _now_ms() -> int:
    return int(time.time() * 1000)


def _text(item: Any) -> str:
    return item.decode() if isinstance(item, bytes) else str(item)
