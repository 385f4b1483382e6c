"""kombu's Redis transports, with one fix: a closed connection is a connection error.

When Redis goes away, Celery closes the broker connection and then its channel; closing the
channel tries to give back the unacknowledged tasks, which asks for the connection's settings,
which are gone. kombu 5.7 raises ``AttributeError`` there, Celery calls it an "Unrecoverable
error" and the worker stops (seen in the Redis-restart fault test, and on ``sentinel://`` when
the primary was killed). Raised as a connection error instead, it is ignored like the others,
the worker reconnects, and the tasks it held come back after the visibility time-out. Nothing
else changes.
"""

from __future__ import annotations

from typing import Any

import kombu.transport
import redis
from kombu.transport import redis as kombu_redis


def _connparams(channel: Any, asynchronous: bool, connparams: Any) -> Any:
    if channel.connection.client is None:
        raise redis.ConnectionError("the broker connection is closed")
    return connparams(asynchronous=asynchronous)


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        return _connparams(self, asynchronous, super()._connparams)


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(kombu_redis.SentinelChannel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        return _connparams(self, asynchronous, super()._connparams)


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


#: The broker URL schemes served here, and the transport of each.
TRANSPORTS = {
    "redis": "Transport",
    "rediss": "Transport",
    "sentinel": "SentinelTransport",
}


def use_fixed_transport() -> None:
    """Make ``redis://``, ``rediss://`` and ``sentinel://`` broker URLs use the fixed transports."""
    for scheme, transport in TRANSPORTS.items():
        kombu.transport.TRANSPORT_ALIASES[scheme] = f"{__name__}:{transport}"
        kombu.transport._transport_cache.pop(scheme, None)
