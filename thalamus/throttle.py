"""Pacing every worker's calls to Thalamus together: one rate cap and one shared pause.

- ``CASESYNC_THALAMUS_MAX_RPS`` is held by a shared schedule in Redis (GCRA: each call reserves
  the next free slot, so the cap holds across all workers without bursts past it);
- a ``Retry-After`` from Thalamus pauses the calls of every worker until then, not only the one
  that got it.

Both live in one Lua script, so a call costs one round trip to learn how long to wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis

from settings import keys
from thalamus.errors import NotSent

# KEYS: schedule, pause-until. ARGV: interval ms (0 = no cap), longest wait ms.
# Returns the ms to wait before calling; a reservation is made only when the wait is acceptable.
_TURN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
local start = math.max(now, tonumber(redis.call('GET', KEYS[2]) or '0'))
if interval > 0 then
  start = math.max(start, tonumber(redis.call('GET', KEYS[1]) or '0'))
end
local wait = start - now
if wait > tonumber(ARGV[2]) then
  return tostring(wait)
end
if interval > 0 then
  redis.call('SET', KEYS[1], tostring(start + interval), 'PX', math.ceil(wait + interval) + 1000)
end
return tostring(wait)
"""

# KEYS: pause-until. ARGV: seconds. Moves the shared pause forward, never back.
_PAUSE = """
local t = redis.call('TIME')
local until_ms = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000 + tonumber(ARGV[1]) * 1000
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_ms > current then
  redis.call('SET', KEYS[1], tostring(until_ms), 'PX', math.ceil(tonumber(ARGV[1]) * 1000) + 1000)
end
return 1
"""


#: Seconds a worker without a rate cap trusts what Redis last said of the shared pause: a
#: ``Retry-After`` got by another worker reaches this one within this time.
PAUSE_CHECK_INTERVAL = 0.1


class Throttled(NotSent):
    """The shared pause or rate cap asks for a longer wait than a task should block."""


class Throttle:
    """Waits for this process's turn to call Thalamus."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        max_rps: float,
        longest_wait: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        pause_check_interval: float = PAUSE_CHECK_INTERVAL,
        on_wait: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        self._on_wait = on_wait
        self._interval_ms = 1000.0 / max_rps if max_rps > 0 else 0.0
        self._longest_wait_ms = longest_wait * 1000
        self._sleep = sleep
        self._monotonic = monotonic
        self._pause_check_interval = pause_check_interval
        self._turn = client.register_script(_TURN)
        self._pause = client.register_script(_PAUSE)
        # Without a cap only the shared pause matters; what Redis said of it is reused for a
        # moment (pause_check_interval) instead of asking before every call.
        self._paused_until = 0.0
        self._next_check = 0.0

    def before_call(self) -> None:
        """Block until this call may go; :class:`Throttled` if that is too long to block."""
        wait_ms = self._wait_ms()
        if wait_ms > self._longest_wait_ms:
            raise Throttled(
                f"Thalamus calls are paused or capped for {wait_ms / 1000:.1f} s",
                retry_after=wait_ms / 1000,
            )
        if wait_ms > 0:
            self._on_wait(wait_ms / 1000)
            self._sleep(wait_ms / 1000)

    def _wait_ms(self) -> float:
        now = self._monotonic()
        if self._interval_ms == 0 and now < self._next_check:
            return max(0.0, self._paused_until - now) * 1000
        reply: Any = self._turn(
            keys=[keys.RATE_SCHEDULE, keys.PAUSE_UNTIL],
            args=[self._interval_ms, self._longest_wait_ms],
        )
        wait_ms = float(reply)
        if self._interval_ms == 0:
            self._paused_until = now + wait_ms / 1000
            self._next_check = now + self._pause_check_interval
        return wait_ms

    def after_call(self, status: int | None, retry_after: float | None) -> None:
        """A ``Retry-After`` from Thalamus pauses every worker's calls until then."""
        if retry_after is not None and retry_after > 0:
            self._pause(keys=[keys.PAUSE_UNTIL], args=[retry_after])
            self._paused_until = max(self._paused_until, self._monotonic() + retry_after)
