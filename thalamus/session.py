"""One Thalamus session for all workers: kept in Redis, renewed by a single login.

After a 401 every worker asks for a session newer than the one refused; the first takes the
login lock and logs in, the others wait (bounded) for its cookie instead of logging in too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis

from settings import keys

LOGIN_LOCK_TTL = 30.0


class RedisSessionCache:
    """A :class:`thalamus.client.SessionCache` shared through Redis."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        wait: float = 10.0,
        poll: float = 0.05,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._redis = client
        self._wait = wait
        self._poll = poll
        self._sleep = sleep
        self._local: str | None = None
        self._lock = threading.Lock()

    def current(self) -> str | None:
        # The copy in this process saves a round trip per call; a 401 refreshes it.
        if self._local is None:
            shared = self._redis.get(keys.SESSION)
            self._local = None if shared is None else str(shared)
        return self._local

    def renew(self, stale: str | None, login: Callable[[], str]) -> str:
        with self._lock:
            deadline = time.monotonic() + self._wait
            while True:
                shared = self._redis.get(keys.SESSION)
                if shared is not None and shared != stale:
                    self._local = str(shared)
                    return self._local
                if self._redis.set(keys.SESSION_LOGIN, "1", nx=True, ex=int(LOGIN_LOCK_TTL)):
                    return self._login(login)
                if time.monotonic() >= deadline:
                    # The login holder is slow or gone: do not wait forever, log in here.
                    return self._login(login)
                self._sleep(self._poll)

    def _login(self, login: Callable[[], str]) -> str:
        try:
            cookie = login()
            self._redis.set(keys.SESSION, cookie)
            self._local = cookie
            return cookie
        finally:
            self._redis.delete(keys.SESSION_LOGIN)
