"""kombu's Redis transport, with one fix: a closed connection is a connection error.

When Redis goes away, Celery closes the broker connection and then its channel; closing the
channel tries to give back the unacknowledged tasks, which asks for the connection's settings,
which are gone. kombu 5.7 raises ``AttributeError`` there, Celery calls it an "Unrecoverable
error" and the worker stops (seen in the Redis-restart fault test). Raised as a connection error
instead, it is ignored like the others, the worker reconnects, and the tasks it held come back
after the visibility time-out. Nothing else changes.
"""

from __future__ import annotations

from typing import Any

import kombu.transport
import redis
from kombu.transport import redis as kombu_redis

#: The URL schemes this transport serves (``sentinel://`` keeps kombu's own).
SCHEMES = ("redis", "rediss")


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise redis.ConnectionError("the broker connection is closed")
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]


class Transport(kombu_redis.Transport):
    Channel = Channel


def use_fixed_transport() -> None:
    """Make ``redis://`` and ``rediss://`` broker URLs use :class:`Transport`."""
    for scheme in SCHEMES:
        kombu.transport.TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"
        kombu.transport._transport_cache.pop(scheme, None)
