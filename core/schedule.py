"""Where every event handed on by intake lives until its outcome is written: leases and due times.

Three Redis structures, all keyed by the stream entry id:

- ``jobs`` (hash): the job (event JSON and retry state) of every entry not yet finished. An entry
  absent from it is finished: a task delivered twice finds nothing left to do.
- ``leases`` (sorted set): the entries a task is working on, scored by when their lease runs out
  (epoch ms). A running task renews its leases (:class:`LeaseKeeper`); a lease that runs out means
  the worker died, froze or lost Redis, and the entry is handed on again.
- ``due`` (sorted set): the entries waiting for a retry, a busy case or the breaker, scored by when
  they are due.

Every worker's intake calls :meth:`Schedule.take_due`; one Lua script moves what is due (expired
leases and due retries) into fresh leases and returns it, so exactly one worker hands each entry
on, and nothing is held in a worker's memory: a killed worker's entries come back one lease later.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.client import Pipeline

from core.redis_faults import WriteRefusals
from settings import keys

log = logging.getLogger("casesync.schedule")

#: Seconds between a lease keeper's rounds while it has case locks to free or entries to give
#: back for a task that could not (Redis failed under it): a case is free again, and its entries
#: due, within this of Redis coming back.
FREE_RETRY = 1.0

# KEYS: leases, due, jobs, lost. ARGV: now ms, lease ms, most.
# Moves up to `most` entries whose lease ran out (counting one more loss each) or whose due time
# came into new leases. Returns {next, id1, job1, lost1, new1, id2, ...}: `next` is the earliest
# score left in either set ('' when both are empty), `new` 1 when this move counted a loss;
# entries without a job (finished) are dropped.
_TAKE_DUE = """
local now, lease, most = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local taken = {}
local function take(id, lost)
  local job = redis.call('HGET', KEYS[3], id)
  if not job then
    redis.call('ZREM', KEYS[1], id)
    return
  end
  redis.call('ZADD', KEYS[1], now + lease, id)
  local count = lost and redis.call('HINCRBY', KEYS[4], id, 1) or redis.call('HGET', KEYS[4], id)
  table.insert(taken, id)
  table.insert(taken, job)
  table.insert(taken, tostring(count or 0))
  table.insert(taken, lost and '1' or '0')
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, most)) do
  take(id, true)
end
local room = most - #taken / 4
if room > 0 then
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, room)) do
    redis.call('ZREM', KEYS[2], id)
    take(id, false)
  end
end
local next = ''
for _, key in ipairs({KEYS[1], KEYS[2]}) do
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if first[2] and (next == '' or tonumber(first[2]) < tonumber(next)) then
    next = first[2]
  end
end
table.insert(taken, 1, next)
return taken
"""

# KEYS: leases, due, jobs. ARGV: entry id, its job ('' to keep the stored one), due time ms.
# Ends the entry's lease and makes it due, unless its job is gone: another delivery of the same
# entry finished it meanwhile, and it must not come back.
_RETRY = """
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then
  if ARGV[2] ~= '' then
    redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
  end
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
end
return 1
"""

# KEYS: jobs, due, the legacy entry-done marker. ARGV: entry id, job, due time ms.
# Adopts a job from outside the schedule unless its outcome was written already or it is known.
_ADOPT = """
if redis.call('EXISTS', KEYS[3]) == 1 then
  return 0
end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
"""

# KEYS: case locks. ARGV: lock ttl ms, then one token per lock. Renews each lock still owned by
# its token (a lock that ran out and went to another worker is left alone).
_RENEW_LOCKS = """
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i + 1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
  end
end
return 1
"""

# KEYS: case locks. ARGV: one token per lock. Deletes each lock still owned by its token (a lock
# that ran out and went to another worker is left alone).
_FREE_LOCKS = """
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i] then
    redis.call('DEL', KEYS[i])
  end
end
return 1
"""


# KEYS: leases, due, jobs. ARGV: due time ms, then pairs of entry id and a bound on its lease
# (ms). Makes each entry due whose lease is still at most its bound, so still the giver's: a lease
# that ran out and went to another worker scores past the bound (it was taken after the bound's
# time, for a whole lease) and is left alone, as is an entry finished meanwhile.
_GIVE_BACK = """
for i = 2, #ARGV, 2 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) <= tonumber(ARGV[i + 1]) then
    redis.call('ZREM', KEYS[1], ARGV[i])
    if redis.call('HEXISTS', KEYS[3], ARGV[i]) == 1 then
      redis.call('ZADD', KEYS[2], ARGV[1], ARGV[i])
    end
  end
end
return 1
"""


@dataclass(frozen=True)
class Job:
    """One stream entry on its way to an outcome, with what its retries must remember."""

    entry_id: str
    raw_event: str
    #: Attempts that spent the retry budget.
    attempts: int = 0
    first_attempt_at: float | None = None
    #: Times its lease ran out: its worker died, froze or was cut off from Redis.
    lost: int = 0
    #: Waits for a busy case in a row, for their back-off (they spend no budget).
    waits: int = 0

    def stored(self) -> str:
        """What the ``jobs`` hash keeps (``lost`` lives apart, counted by the script)."""
        state = {"event": self.raw_event, "attempts": self.attempts, "waits": self.waits}
        if self.first_attempt_at is not None:
            state["first"] = self.first_attempt_at
        return json.dumps(state, separators=(",", ":"))

    @classmethod
    def restored(cls, entry_id: str, stored: str, lost: int) -> Job:
        state = json.loads(stored)
        return cls(
            entry_id=entry_id,
            raw_event=state["event"],
            attempts=int(state.get("attempts", 0)),
            first_attempt_at=state.get("first"),
            lost=lost,
            waits=int(state.get("waits", 0)),
        )

    def wire(self) -> dict[str, Any]:
        """The job as a task message carries it (JSON)."""
        return {
            "entry": self.entry_id,
            "event": self.raw_event,
            "attempts": self.attempts,
            "first": self.first_attempt_at,
            "lost": self.lost,
            "waits": self.waits,
        }

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> Job:
        return cls(
            entry_id=str(wire["entry"]),
            raw_event=str(wire["event"]),
            attempts=int(wire.get("attempts") or 0),
            first_attempt_at=wire.get("first"),
            lost=int(wire.get("lost") or 0),
            waits=int(wire.get("waits") or 0),
        )


@dataclass(frozen=True)
class Taken:
    """What :meth:`Schedule.take_due` moved, and when the next entry falls due."""

    jobs: list[Job]
    #: Epoch seconds of the earliest lease or due time left; None when nothing waits.
    next_due: float | None
    #: How many of ``jobs`` come back because their lease ran out just now.
    lost_now: int = 0


@dataclass(frozen=True)
class Waiting:
    """An entry waiting in the schedule, for ``casesync status``."""

    entry_id: str
    due: float
    attempts: int


class Schedule:
    """The leases and due times of every unfinished entry, over one Redis client."""

    def __init__(self, client: redis.Redis, *, lease: float) -> None:
        self._redis = client
        self.lease = lease
        self._take_due = client.register_script(_TAKE_DUE)
        self._renew_locks = client.register_script(_RENEW_LOCKS)
        self._free_locks = client.register_script(_FREE_LOCKS)
        self._retry = client.register_script(_RETRY)
        self._adopt = client.register_script(_ADOPT)
        self._give_back = client.register_script(_GIVE_BACK)

    def add_leased(self, pipe: Pipeline, jobs: Sequence[Job], now: float) -> None:
        """Queue new jobs, leased to the task about to be sent, into the caller's MULTI."""
        if not jobs:
            return
        pipe.hset(keys.JOBS, mapping={job.entry_id: job.stored() for job in jobs})
        until = _ms(now + self.lease)
        pipe.zadd(keys.LEASES, {job.entry_id: until for job in jobs})

    def take_due(self, now: float, most: int) -> Taken:
        """Lease to the caller up to ``most`` entries whose lease ran out or whose time came."""
        reply: Any = self._take_due(
            keys=[keys.LEASES, keys.DUE, keys.JOBS, keys.LOST],
            args=[_ms(now), _ms(self.lease), most],
        )
        head, rest = reply[0], reply[1:]
        jobs = [
            Job.restored(str(rest[i]), str(rest[i + 1]), int(rest[i + 2]))
            for i in range(0, len(rest), 4)
        ]
        lost_now = sum(1 for i in range(3, len(rest), 4) if str(rest[i]) == "1")
        return Taken(jobs, None if head in ("", b"") else float(head) / 1000, lost_now)

    def adopt(self, job: Job, due: float) -> bool:
        """Put a job that reached casesync outside intake (a task of the one-event-per-task
        design, queued before an upgrade) on the schedule, due at ``due``. False when its
        outcome was written already or the schedule knows the entry."""
        done_key = f"{keys.LEGACY_ENTRY_DONE}:{job.entry_id}"
        reply: Any = self._adopt(
            keys=[keys.JOBS, keys.DUE, done_key], args=[job.entry_id, job.stored(), _ms(due)]
        )
        return bool(reply)

    def retry_at(self, entry_ids: Iterable[str], due: float) -> None:
        """Make leased entries due at ``due`` (epoch s), their jobs unchanged."""
        pipe = self._redis.pipeline(transaction=False)
        for entry_id in entry_ids:
            self._add_retry(pipe, entry_id, "", due)
        pipe.execute()

    @staticmethod
    def add_finished(pipe: Pipeline, entry_id: str) -> None:
        """Queue the end of an entry (its outcome is written in the same MULTI)."""
        pipe.zrem(keys.LEASES, entry_id)
        pipe.hdel(keys.JOBS, entry_id)
        pipe.hdel(keys.LOST, entry_id)

    def add_retry(self, pipe: Pipeline, job: Job, due: float) -> None:
        """Queue a job's next try at ``due`` (epoch s), with its state as it now stands."""
        self._add_retry(pipe, job.entry_id, job.stored(), due)

    def _add_retry(self, pipe: Pipeline, entry_id: str, stored: str, due: float) -> None:
        self._retry(
            keys=[keys.LEASES, keys.DUE, keys.JOBS], args=[entry_id, stored, _ms(due)], client=pipe
        )

    def renew(
        self,
        entry_ids: Sequence[str],
        locks: Sequence[tuple[str, str]],
        now: float,
        lock_ttl: float,
        free: Sequence[tuple[str, str]] = (),
        give_back: Sequence[tuple[str, float]] = (),
    ) -> None:
        """Push the leases of ``entry_ids`` and the case ``locks`` (key, token) further out,
        delete the locks in ``free`` that their tokens still own, and make the entries of
        ``give_back`` (entry id, bound on its lease) due now while their leases are still the
        giver's."""
        pipe = self._redis.pipeline(transaction=False)
        if entry_ids:
            # XX: an entry finished meanwhile is not brought back.
            pipe.zadd(keys.LEASES, dict.fromkeys(entry_ids, _ms(now + self.lease)), xx=True)
        if locks:
            self._renew_locks(
                keys=[key for key, _ in locks],
                args=[_ms(lock_ttl), *(token for _, token in locks)],
                client=pipe,
            )
        if free:
            self._free_locks(
                keys=[key for key, _ in free], args=[token for _, token in free], client=pipe
            )
        if give_back:
            self._add_give_back(pipe, give_back, now)
        pipe.execute()

    def give_back(self, entries: Sequence[tuple[str, float]], now: float) -> None:
        """Make each entry (entry id, bound on its lease) due at ``now`` while its lease is still
        the giver's: at most the bound."""
        if entries:
            self._add_give_back(self._redis, entries, now)

    def _add_give_back(
        self, client: redis.Redis | Pipeline, entries: Sequence[tuple[str, float]], now: float
    ) -> None:
        bounds = [arg for entry_id, bound in entries for arg in (entry_id, _ms(bound))]
        self._give_back(
            keys=[keys.LEASES, keys.DUE, keys.JOBS], args=[_ms(now), *bounds], client=client
        )

    def waiting(self, most: int) -> tuple[int, int, list[Waiting]]:
        """Entries leased, entries due later, and the ``most`` next due with their times."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.zcard(keys.LEASES)
        pipe.zcard(keys.DUE)
        pipe.zrange(keys.DUE, 0, most - 1, withscores=True)
        leased, due, first = pipe.execute()
        stored = self._redis.hmget(keys.JOBS, [entry_id for entry_id, _ in first]) if first else []
        found = [
            Waiting(str(entry_id), score / 1000, _attempts(state))
            for (entry_id, score), state in zip(first, stored, strict=True)
        ]
        return int(leased), int(due), found


class LeaseKeeper:
    """Renews, from one thread per process, the leases and case locks its tasks hold.

    A task holds its entries' leases and its cases' locks only as long as it runs: while this
    process lives they are renewed every ``interval``; once it dies they run out, and the entries
    come back to another worker. So no lease has to outlast the longest batch.

    It also frees the case locks and gives back the entries a task could not give back because
    Redis failed under it (:meth:`free_later`, :meth:`give_back_later`), at its first round that
    reaches Redis, rather than leaving their cases and entries to wait until they run out.
    """

    def __init__(
        self,
        schedule: Schedule,
        *,
        interval: float,
        lock_ttl: float,
        clock: Callable[[], float],
        refusals: WriteRefusals | None = None,
    ) -> None:
        self._schedule = schedule
        self._refusals = refusals or WriteRefusals(clock=time.monotonic)
        self._interval = interval
        self._lock_ttl = lock_ttl
        self._clock = clock
        self._entries: dict[str, int] = {}
        self._locks: dict[tuple[str, str], int] = {}
        #: A bound on when each held entry's lease runs out (clock time): when it was held or
        #: last renewed, plus a lease. Another worker can only have taken it after this.
        self._held_until: dict[str, float] = {}
        #: Entries to make due at the first round that reaches Redis, with their bounds.
        self._to_give_back: dict[str, float] = {}
        #: Locks to free, with when they run out by themselves anyway (clock time).
        self._to_free: dict[tuple[str, str], float] = {}
        # Held while renewing: a task that lets go of an entry waits for a renewal in flight, so
        # the renewal cannot land after the task rescheduled the entry and push it back.
        self._lock = threading.Lock()
        self._stop = threading.Event()
        #: Set to start a round now: locks to free should not wait out a whole interval.
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        #: When Redis last confirmed this process's locks: taken, or renewed (clock time).
        self._confirmed_at = clock()

    def hold(self, entry_ids: Iterable[str], locks: Iterable[tuple[str, str]] = ()) -> None:
        """Renew these from now on; ``locks`` were just taken, which confirms them."""
        with self._lock:
            until = self._clock() + self._schedule.lease
            for entry_id in entry_ids:
                self._entries[entry_id] = self._entries.get(entry_id, 0) + 1
                self._held_until[entry_id] = max(self._held_until.get(entry_id, 0.0), until)
            locks = list(locks)
            for lock in locks:
                self._locks[lock] = self._locks.get(lock, 0) + 1
            if locks:
                self._confirmed_at = max(self._confirmed_at, self._clock())
            self._start()

    def locks_confirmed(self) -> bool:
        """Whether Redis confirmed this process's case locks within half their time to live.

        When renewals fail (Redis unreachable), a lock may run out and its case go to another
        task: a task checks this before each attempt and, when it fails, sends nothing more
        under its locks, so two tasks never update one case at once.
        """
        with self._lock:
            return self._clock() - self._confirmed_at < self._lock_ttl / 2

    def release(self, entry_ids: Iterable[str], locks: Iterable[tuple[str, str]] = ()) -> None:
        with self._lock:
            entry_ids = list(entry_ids)
            _forget(self._entries, entry_ids)
            _forget(self._locks, locks)
            for entry_id in entry_ids:
                if entry_id not in self._entries:
                    self._held_until.pop(entry_id, None)

    def free_later(self, locks: Iterable[tuple[str, str]]) -> None:
        """Free the case ``locks`` (key, token) at the first round that reaches Redis.

        For a task that could not give them back itself: it must send nothing more under them.
        Each is deleted only while its token still owns it, so one that ran out meanwhile and
        went to another task is left alone; once it would have run out, it is forgotten.
        """
        with self._lock:
            until = self._clock() + self._lock_ttl
            for lock in locks:
                self._to_free[lock] = until
            if self._to_free:
                self._start()
                self._wake.set()

    def give_back_later(self, entry_ids: Iterable[str]) -> None:
        """Make the held ``entry_ids`` due at the first round that reaches Redis.

        For a task that could not give them back itself (Redis failed under it): they come back
        as soon as Redis answers, not a whole lease later. An entry whose lease ran out meanwhile
        is left to whoever took it; call this before :meth:`release`.
        """
        with self._lock:
            for entry_id in entry_ids:
                if entry_id in self._held_until:
                    self._to_give_back[entry_id] = self._held_until[entry_id]
            if self._to_give_back:
                self._start()
                self._wake.set()

    def renew_now(self) -> None:
        with self._lock:
            now = self._clock()
            self._to_free = {lock: until for lock, until in self._to_free.items() if until > now}
            # A lease that ran out is handed on by intake anyway.
            self._to_give_back = {
                entry_id: until for entry_id, until in self._to_give_back.items() if until > now
            }
            entries, locks, free = list(self._entries), list(self._locks), list(self._to_free)
            # An entry still held (its task has yet to release it) waits for a later round.
            give_back = [item for item in self._to_give_back.items() if item[0] not in entries]
            if entries or locks or free or give_back:
                self._schedule.renew(
                    entries, locks, now, self._lock_ttl, free=free, give_back=give_back
                )
            self._confirmed_at = now
            for entry_id in entries:
                self._held_until[entry_id] = now + self._schedule.lease
                if entry_id in self._to_give_back:
                    self._to_give_back[entry_id] = now + self._schedule.lease
            for lock in free:
                del self._to_free[lock]
            for entry_id, _ in give_back:
                del self._to_give_back[entry_id]

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="casesync-leases", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._wait())
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.renew_now()
            except redis.RedisError as exc:
                # Leases not renewed run out and their entries go to another worker: nothing
                # is lost, at worst an update is tried twice under the case lock's rules.
                # A refusal to write is said once for the process, not at every round.
                if not self._refusals.report(exc, "the lease keeper"):
                    log.warning("could not renew leases: %s", exc)

    def _wait(self) -> float:
        with self._lock:
            pending = self._to_free or self._to_give_back
            return min(self._interval, FREE_RETRY) if pending else self._interval


def _forget(counts: dict[Any, int], items: Iterable[Any]) -> None:
    for item in items:
        left = counts.get(item, 0) - 1
        if left > 0:
            counts[item] = left
        else:
            counts.pop(item, None)


def _attempts(stored: str | bytes | None) -> int:
    if not stored:
        return 0
    try:
        return int(json.loads(stored).get("attempts", 0))
    except (ValueError, AttributeError):
        return 0


def _ms(seconds: float) -> int:
    return int(seconds * 1000)
