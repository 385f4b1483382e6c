"""The circuit breaker: while Thalamus is down, stop taking events and probe until it answers.

Each process counts its own run of failures (connection errors, time-outs, 5xx); the run that
reaches the threshold opens the breaker for everyone, in Redis, with the reason. While it is
open, intake reads nothing and retries wait without spending their budget; one worker at a time
probes ``isAlive`` and the first answer closes it again for all.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from settings import keys

log = logging.getLogger("casesync.breaker")


class Breaker:
    def __init__(
        self,
        client: redis.Redis,
        *,
        threshold: int,
        probe_interval: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = client
        self._threshold = threshold
        self._probe_interval = probe_interval
        self._monotonic = monotonic
        self._failures = 0
        self._checked_at = 0.0
        self._lock = threading.Lock()

    def open_reason(self) -> str | None:
        """Why the breaker is open, or None when it is closed."""
        reason = self._redis.get(keys.BREAKER_OPEN)
        return None if reason is None else str(reason)

    def tripped(self) -> bool:
        """Whether this process's calls failed ``threshold`` times in a row and the breaker is
        still open: the rest of a batch then waits instead of spending its budget. Redis is
        asked at most once a probe interval, since another worker's probe may close it."""
        with self._lock:
            if self._failures < self._threshold:
                return False
            now = self._monotonic()
            if now - self._checked_at < self._probe_interval:
                return True
            self._checked_at = now
        if self.open_reason() is not None:
            return True
        with self._lock:
            self._failures = 0
        return False

    def before_call(self) -> None:
        """Calls are not held here: intake and the applier consult :meth:`open_reason`."""

    def after_call(self, status: int | None, retry_after: float | None) -> None:
        """Count a call's result: ``None`` for a call that got no answer."""
        failed = status is None or status >= 500
        with self._lock:
            self._failures = self._failures + 1 if failed else 0
            reached = failed and self._failures >= self._threshold
        if reached:
            what = "no answer" if status is None else f"HTTP {status}"
            self.open(f"{self._failures} calls in a row failed (last: {what})")

    def open(self, reason: str) -> None:
        if self._redis.set(keys.BREAKER_OPEN, reason, nx=True):
            log.warning("circuit breaker opened: %s", reason)

    def probe(self, is_alive: Callable[[], bool]) -> bool:
        """If open and no one probed lately, probe; True when the breaker is (now) closed."""
        if self.open_reason() is None:
            return True
        probe_ms = max(1, int(self._probe_interval * 1000))
        if not self._redis.set(keys.BREAKER_PROBE, "1", nx=True, px=probe_ms):
            return False
        if not is_alive():
            return False
        self.close()
        return True

    def close(self) -> None:
        with self._lock:
            self._failures = 0
        if self._redis.delete(keys.BREAKER_OPEN):
            log.warning("circuit breaker closed: Thalamus answers again")
