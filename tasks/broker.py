"""kombu's Redis transport, with two fixes: a closed connection is a connection error, and a
Redis that refuses writes pauses the worker instead of stopping it.

When Redis goes away, Celery closes the broker connection and then its channel; closing the
channel tries to give back the unacknowledged tasks, which asks for the connection's settings,
which are gone. kombu 5.7 raises ``AttributeError`` there, Celery calls it an "Unrecoverable
error" and the worker stops (seen in the Redis-restart fault test). Raised as a connection error
instead, it is ignored like the others, the worker reconnects, and the tasks it held come back
after the visibility time-out. ``sentinel://`` needs it as much (seen when the fail-over test
killed the primary): its channel is kombu's sentinel channel under the same fixes.

When Redis turns into a replica under the worker (a fail-over), the ``BRPOP`` waiting for tasks
is answered ``UNBLOCKED`` and every later one ``READONLY``: kombu raises them as they come, Celery
calls them an "Unrecoverable error" and the worker stops (seen in the read-only fault test). Full
(``OOM``), Redis still pops tasks but cannot record them as taken. So while this process knows
Redis refuses writes (:class:`core.redis_faults.WriteRefusals`, fed by intake's write probe and
every other writer), the worker sends no ``BRPOP``: it takes no task it could not record, and a
refused one is recorded and skipped, as are kombu's own writes of bindings (and their deadlines)
and of its lock for restoring unacknowledged tasks. It consumes again as soon as a write goes
through.
"""

from __future__ import annotations

from typing import Any

import kombu.transport
import redis
from kombu.transport import redis as kombu_redis

from tasks.runtime import write_refusals

#: The broker URL schemes served here, and the transport of each.
TRANSPORTS = {"redis": "Transport", "rediss": "Transport", "sentinel": "SentinelTransport"}


class QoS(kombu_redis.QoS):
    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        # Needs a write (its mutex); tasks not acknowledged wait until Redis takes writes.
        if write_refusals().current() is not None:
            return
        try:
            super().restore_visible(*args, **kwargs)  # type: ignore[no-untyped-call]
        except redis.ResponseError as exc:
            if not write_refusals().report(exc, "the broker (restoring unacknowledged tasks)"):
                raise


class Channel(kombu_redis.Channel):
    QoS = QoS

    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise redis.ConnectionError("the broker connection is closed")
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]

    def _brpop_start(self, timeout: Any = None) -> None:
        # While writes are refused, take no task: the event loop comes back here at least once a
        # second, and consumes again once a write went through.
        if write_refusals().current() is not None:
            return
        super()._brpop_start(timeout)  # type: ignore[no-untyped-call]

    def _brpop_read(self, **options: Any) -> Any:
        try:
            return super()._brpop_read(**options)  # type: ignore[no-untyped-call]
        except redis.ResponseError as exc:
            # The reply was read whole: the connection stays usable, the next BRPOP waits.
            if not write_refusals().report(exc, "the broker (taking tasks)"):
                raise
            return False

    def maybe_refresh_binding_expiry(self) -> None:
        # A script that writes: the bindings' deadlines are pushed out once Redis takes writes.
        if write_refusals().current() is not None:
            return
        try:
            super().maybe_refresh_binding_expiry()  # type: ignore[no-untyped-call]
        except redis.ResponseError as exc:
            if not write_refusals().report(exc, "the broker (refreshing its bindings)"):
                raise

    def _queue_bind(self, *args: Any) -> None:
        # A binding is written anew at every (re)connection: the one written before stands.
        try:
            super()._queue_bind(*args)  # type: ignore[no-untyped-call]
        except redis.ResponseError as exc:
            if not write_refusals().report(exc, "the broker (declaring its queue)"):
                raise


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """The fixes above over kombu's sentinel channel, which follows the Sentinels' primary."""


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


def use_fixed_transport() -> None:
    """Make ``redis://``, ``rediss://`` and ``sentinel://`` broker URLs use the fixed transports."""
    for scheme, transport in TRANSPORTS.items():
        kombu.transport.TRANSPORT_ALIASES[scheme] = f"{__name__}:{transport}"
        kombu.transport._transport_cache.pop(scheme, None)
