"""Touchpoint credentials and login sessions of the simulator.

A session expires a fixed number of seconds after its login (not after its last use), so a test
can wait out ``--session-ttl`` and be sure of a 401.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping

SESSION_COOKIE = "JSESSIONID"


def touchpoint_ok(
    expected_touchpoint: str | None,
    expected_token: str | None,
    headers: Mapping[str, str],
    query: Mapping[str, str],
) -> bool:
    """True when the request carries the configured code and token (headers or query)."""
    if not expected_touchpoint and not expected_token:
        return True
    touchpoint = headers.get("thalamus-touchpoint") or query.get("touchpoint") or ""
    token = headers.get("thalamus-token") or query.get("token") or ""
    return secrets.compare_digest(touchpoint, expected_touchpoint or "") and secrets.compare_digest(
        token, expected_token or ""
    )


class Sessions:
    """Live sessions by cookie value, each with its principal and its moment of expiry."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._live: dict[str, tuple[str, float]] = {}

    def open(self, principal: str) -> str:
        """A new session for ``principal``; its cookie value."""
        self._forget_expired()
        token = secrets.token_hex(16)
        self._live[token] = (principal, self._clock() + self.ttl)
        return token

    def principal(self, token: str | None) -> str | None:
        """The principal of a live session; None for a missing, unknown or expired one."""
        entry = self._live.get(token) if token else None
        if entry is None:
            return None
        if entry[1] <= self._clock():
            self._live.pop(token or "", None)
            return None
        return entry[0]

    def close(self, token: str | None) -> None:
        self._live.pop(token or "", None)

    def clear(self) -> None:
        self._live.clear()

    def _forget_expired(self) -> None:
        # Only at login, so memory stays bounded by the logins within one TTL.
        now = self._clock()
        for token in [token for token, (_, expiry) in self._live.items() if expiry <= now]:
            del self._live[token]
