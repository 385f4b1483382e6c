"""A Redis that answers but refuses writes: which errors those are, and saying so once.

Redis can be up, reachable and reading while it refuses every write: it is full (``maxmemory``
reached under ``noeviction``: ``OOM``), it became a replica under us (a fail-over promoted
another server: ``READONLY``, and ``UNBLOCKED`` for a blocking read cut off by the change), it
cannot persist (``MISCONF``), or too few replicas follow it (``NOREPLICAS``). None of these is
the fault of an event, and none passes by retrying at once: casesync keeps every event, waits,
and resumes by itself once Redis takes writes again.

:func:`refusal_of` turns any error (redis-py's, or one raised from it, as kombu does) into a
:class:`Refusal`, or None when it is something else. :class:`WriteRefusals` is one process's
record of them: a warning when refusals start, a reminder once a minute while they last, a line
when Redis takes writes again; and whether they last, for the parts that pause meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import redis

from settings import keys

log = logging.getLogger("casesync.redis")

#: The key a write probe sets, and how long it lives (ms): nothing else reads it.
PROBE_KEY = f"{keys.PREFIX}:health:write-probe"
PROBE_TTL_MS = 10_000


class RefusalKind(StrEnum):
    """Why Redis refuses writes, named by the error code it answers with."""

    OUT_OF_MEMORY = "OOM"
    READ_ONLY = "READONLY"
    UNBLOCKED = "UNBLOCKED"
    NOT_PERSISTING = "MISCONF"
    NO_REPLICAS = "NOREPLICAS"


#: What each refusal means for an operator, and what to do about it.
_MEANING = {
    RefusalKind.OUT_OF_MEMORY: "Redis is full (maxmemory reached and maxmemory-policy "
    "noeviction): free memory or raise maxmemory",
    RefusalKind.READ_ONLY: "this Redis is a read-only replica (another server was promoted?): "
    "point CASESYNC_REDIS_URL at the primary, or promote this one",
    RefusalKind.UNBLOCKED: "this Redis turned into a replica under a blocking read (another "
    "server was promoted?): point CASESYNC_REDIS_URL at the primary, or promote this one",
    RefusalKind.NOT_PERSISTING: "Redis cannot save to disk and stops writes until it can: "
    "see its log (disk full, permissions)",
    RefusalKind.NO_REPLICAS: "Redis has fewer replicas than min-replicas-to-write: bring "
    "replicas back or lower that setting",
}

#: Words of each refusal's message, for errors whose code redis-py does not map to a class of its
#: own (``UNBLOCKED``, ``MISCONF``, ``NOREPLICAS``) or that a script's error carries.
_MARKS = (
    (RefusalKind.OUT_OF_MEMORY, "used memory > 'maxmemory'"),
    (RefusalKind.READ_ONLY, "write against a read only replica"),
    (RefusalKind.UNBLOCKED, "force unblock from blocking operation"),
    (RefusalKind.NOT_PERSISTING, "MISCONF"),
    (RefusalKind.NO_REPLICAS, "NOREPLICAS"),
)


@dataclass(frozen=True)
class Refusal:
    """Redis refused a write: why, and what it said."""

    kind: RefusalKind
    message: str

    @property
    def reason(self) -> str:
        """For an operator: the error code, what it means and what to do."""
        return f"{self.kind}: {_MEANING[self.kind]} (Redis said: {self.message})"


def refusal_of(error: BaseException) -> Refusal | None:
    """The write refusal ``error`` is, or was raised from; None for any other error."""
    seen: BaseException | None = error
    for _ in range(5):  # kombu and redis-py wrap an error at most a few times
        if seen is None:
            return None
        found = _refusal(seen)
        if found is not None:
            return found
        seen = seen.__cause__ or seen.__context__
    return None


def _refusal(error: BaseException) -> Refusal | None:
    message = str(error).strip()
    if isinstance(error, redis.OutOfMemoryError):
        return Refusal(RefusalKind.OUT_OF_MEMORY, message)
    if isinstance(error, redis.ReadOnlyError):
        return Refusal(RefusalKind.READ_ONLY, message)
    if not isinstance(error, redis.RedisError):
        return None
    for kind, mark in _MARKS:
        if mark in message:
            return Refusal(kind, message)
    return None


def probe_writes(client: redis.Redis) -> Refusal | None:
    """Whether Redis takes a write now: one short-lived ``SET``; the refusal, or None."""
    try:
        client.set(PROBE_KEY, "1", px=PROBE_TTL_MS)
    except redis.ResponseError as exc:
        return refusal_of(exc)
    return None


class WriteRefusals:
    """One process's record of Redis refusing writes, and the log lines that say so.

    Every part that writes reports each refusal (:meth:`report`); while they last, the parts
    that loop ask :meth:`writable` before a turn, which probes with one write. The first
    refusal is logged as a warning naming the cause and what to do; while they last, a reminder
    once per ``remind_every``; the first probe accepted after them, a line saying so and how
    long they lasted. Thread-safe.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        remind_every: float = 60.0,
        logger: logging.Logger = log,
    ) -> None:
        self._clock = clock
        self._remind_every = remind_every
        self._log = logger
        self._lock = threading.Lock()
        self._current: Refusal | None = None
        self._since = 0.0
        self._reminded = 0.0
        self._count = 0

    def refused(self, refusal: Refusal, where: str) -> None:
        """Redis refused a write by ``where`` (a part of casesync, for the first line)."""
        with self._lock:
            now = self._clock()
            self._count += 1
            if self._current is None:
                self._current, self._since, self._reminded = refusal, now, now
                self._log.warning(
                    "Redis refuses writes (first seen by %s): %s. casesync keeps every event "
                    "and resumes by itself once Redis takes writes again",
                    where,
                    refusal.reason,
                )
                return
            self._current = refusal
            if now - self._reminded >= self._remind_every:
                self._reminded = now
                self._log.warning(
                    "Redis still refuses writes after %.0f s (%d refusals so far): %s",
                    now - self._since,
                    self._count,
                    refusal.reason,
                )

    def accepted(self) -> None:
        """A write went through: if Redis refused writes until now, say that it stopped."""
        with self._lock:
            if self._current is None:
                return
            self._log.warning(
                "Redis accepts writes again after %.1f s of refusals (%d refused); resuming",
                self._clock() - self._since,
                self._count,
            )
            self._current, self._count = None, 0

    def current(self) -> Refusal | None:
        """The latest refusal while refusals last (no write accepted since); else None."""
        with self._lock:
            return self._current

    def writable(self, client: redis.Redis, where: str) -> bool:
        """Whether to write now: yes, unless refusals last and a write probe is refused too.

        Only a probe ends refusals: a write that went through may be one a full Redis still
        takes (a delete), which says nothing of the others.
        """
        if self.current() is None:
            return True
        refusal = probe_writes(client)
        if refusal is None:
            self.accepted()
            return True
        self.refused(refusal, where)
        return False

    def report(self, error: BaseException, where: str) -> bool:
        """Record ``error`` if it is a write refusal; whether it was one."""
        refusal = refusal_of(error)
        if refusal is None:
            return False
        self.refused(refusal, where)
        return True
