"""Waiting for replicas to confirm the writes a fail-over must not lose.

Redis replicates asynchronously: a write it acknowledged may not have reached the replica when
the primary dies, and the replica promoted in its place never saw it. Of casesync's writes, the
one that matters is the attempt mark (:mod:`core.guards`), written when a batch takes its cases,
before any update goes out: lost, a retry after the fail-over cannot know an update went out,
and sends it (and its comments) again. A lost outcome, ledger entry or stream acknowledgement
only repeats work that the surviving mark makes safe: the case is read back first.

So each batch asks ``WAIT`` for its marks on the connection that wrote them, in the same round
trip. Unconfirmed (no replica, or one lagging past the time-out) the batch goes on all the same,
and the check rests for a while, so a single Redis without replicas pays one time-out per rest.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from redis.client import Pipeline

log = logging.getLogger("casesync.replicas")

#: Seconds the check rests after its first unconfirmed WAIT; doubled after each one, up to
#: :data:`LONGEST_REST`.
FIRST_REST = 30.0
LONGEST_REST = 600.0


class ReplicaWait:
    """``WAIT replicas timeout`` after a batch's writes, and the rest after an unconfirmed one."""

    def __init__(
        self,
        replicas: int,
        timeout: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._replicas = replicas
        # WAIT 0 would block for ever.
        self._timeout_ms = max(1, round(timeout * 1000))
        self._clock = clock
        self._lock = threading.Lock()
        self._rest = FIRST_REST
        self._resting_until = 0.0
        #: Whether this run of unconfirmed WAITs was reported as a warning already.
        self._warned = False

    def due(self) -> bool:
        """Whether a batch should WAIT now: on, and not resting."""
        return self._replicas > 0 and self._clock() >= self._resting_until

    def add(self, pipe: Pipeline) -> None:
        """Queue the WAIT into ``pipe``, after the writes it is to confirm."""
        pipe.wait(self._replicas, self._timeout_ms)

    def judge(self, reply: object) -> bool:
        """Note the WAIT's reply (the replicas that confirmed, or an error); whether confirmed."""
        confirmed = isinstance(reply, int) and reply >= self._replicas
        with self._lock:
            if confirmed:
                self._rest = FIRST_REST
                self._warned = False
                return True
            now = self._clock()
            if now < self._resting_until:
                # Another batch that waited at the same time already started the rest.
                return False
            rest, self._rest = self._rest, min(self._rest * 2, LONGEST_REST)
            self._resting_until = now + rest
            # A warning when confirmations stop; the checks after it only say they still fail,
            # so a Redis that has no replica at all does not warn every ten minutes.
            level, self._warned = (logging.INFO if self._warned else logging.WARNING), True
        log.log(
            level,
            "%s of %d replicas confirmed the attempt marks within %d ms: a fail-over now may "
            "lose them and send an update twice (with no replica at all, set "
            "CASESYNC_REDIS_WAIT_REPLICAS=0); checking again in %.0f s",
            reply if isinstance(reply, int) else f"none ({reply})",
            self._replicas,
            self._timeout_ms,
            rest,
        )
        return False
