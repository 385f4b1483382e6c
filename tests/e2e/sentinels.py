"""A primary, its replica and three Sentinels on loopback, and a real kill -9 of the primary.

The replica follows the primary through a :class:`LagProxy`, so replication is as late as a
loaded link makes it, and what the primary had not yet sent is lost when it is killed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.sentinel import Sentinel

from ops import processes
from tests.e2e.lag_proxy import LagProxy, lag_proxy

SENTINELS = 3
QUORUM = 2
#: Seconds the replica lags behind the primary, as over a slow or loaded link: enough that a
#: write acknowledged half a second before the kill has not reached it (a test's WAIT time-out
#: must exceed it).
REPLICATION_LAG = 0.5
#: Of every server and Sentinel, so the workers' URL carries a password as production's does.
PASSWORD = "fail-over-test"


@dataclass
class SentinelSetup:
    """The servers of a fail-over test; the processes stop with the test."""

    primary: Any
    primary_port: int
    replica_port: int
    sentinel_ports: list[int]
    proxy: LagProxy

    @property
    def url(self) -> str:
        """The ``sentinel://`` URL workers take, listing every Sentinel."""
        hosts = (f"sentinel://:{PASSWORD}@127.0.0.1:{port}" for port in self.sentinel_ports)
        return ";".join(hosts) + "/0"

    def master(self) -> redis.Redis:
        """A client of whichever server the Sentinels name primary, following a fail-over."""
        sentinel = Sentinel(
            [("127.0.0.1", port) for port in self.sentinel_ports],
            sentinel_kwargs={"socket_timeout": 2.0, "password": PASSWORD},
        )
        client: redis.Redis = sentinel.master_for(
            processes.SENTINEL_MASTER,
            password=PASSWORD,
            decode_responses=True,
            socket_timeout=10.0,
            socket_connect_timeout=2.0,
        )
        return client

    def kill_primary(self) -> None:
        """kill -9 the primary, and lose what it had not yet sent to its replica."""
        with _client(self.replica_port) as replica:
            link = replica.info("replication")
        assert link["master_port"] == self.proxy.port, "the replica still follows the lag proxy"
        processes.kill_process(self.primary)
        self.proxy.cut()

    def primary_named(self) -> int:
        """The port of the server the first Sentinel answering names primary."""
        for port in self.sentinel_ports:
            client = _client(port)
            try:
                name = processes.SENTINEL_MASTER
                named: Any = client.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", name)
                return int(named[1])
            except redis.RedisError:
                continue
            finally:
                client.close()
        raise AssertionError("no Sentinel answers")


def _client(port: int) -> redis.Redis:
    return redis.Redis(port=port, password=PASSWORD, socket_timeout=1.0, decode_responses=True)


def _wait_until_watching(ports: list[int], timeout: float) -> None:
    """Until every Sentinel knows the replica and the other Sentinels, so it can fail over."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(_knows_everyone(port) for port in ports):
            return
        time.sleep(0.2)
    raise AssertionError(f"the Sentinels did not find each other within {timeout} s")


def _knows_everyone(port: int) -> bool:
    client = _client(port)
    try:
        state = client.sentinel_master(processes.SENTINEL_MASTER)
    except redis.RedisError:
        return False
    finally:
        client.close()
    return bool(state["num-other-sentinels"] == SENTINELS - 1 and state["num-slaves"] == 1)


@contextlib.contextmanager
def running_sentinels(tmp_path: Path, lag: float = REPLICATION_LAG) -> Iterator[SentinelSetup]:
    """1 primary, 1 replica (``lag`` seconds behind), 3 Sentinels at quorum 2, stopped after."""
    ports = [processes.free_port() for _ in range(2 + SENTINELS)]
    primary_port, replica_port, sentinel_ports = ports[0], ports[1], ports[2:]
    with ExitStack() as stack:
        primary = stack.enter_context(
            processes.valkey_process(
                tmp_path / "primary", primary_port, processes.primary_config(), password=PASSWORD
            )
        )
        proxy = stack.enter_context(lag_proxy(primary_port, lag))
        stack.enter_context(
            processes.valkey_process(
                tmp_path / "replica",
                replica_port,
                processes.replica_config(proxy.port),
                password=PASSWORD,
            )
        )
        with _client(replica_port) as replica:
            processes.wait_until_replicating(replica, timeout=20.0)
        for n, port in enumerate(sentinel_ports):
            config = processes.sentinel_config(primary_port, quorum=QUORUM, password=PASSWORD)
            folder = tmp_path / f"sentinel-{n}"
            stack.enter_context(
                processes.valkey_process(folder, port, config, sentinel=True, password=PASSWORD)
            )
        _wait_until_watching(sentinel_ports, timeout=30.0)
        yield SentinelSetup(primary, primary_port, replica_port, sentinel_ports, proxy)
