"""Runs the simulator as a child process for tests, the demo and benchmarks.

The child binds port 0 and writes the port it got to a file, so there is no race for a free port;
start-up is awaited for a bounded time, and the child is always stopped at exit (SIGTERM, then
SIGKILL).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from thalamus.simulator.admin import SimulatorAdmin


class SimulatorStartError(RuntimeError):
    """The simulator process exited or did not answer in time; the message has its output."""


@dataclass
class RunningSimulator:
    """A simulator child process: its base URL, an admin client, the process itself."""

    url: str
    port: int
    admin: SimulatorAdmin
    process: subprocess.Popen[bytes]
    log_path: Path

    def output(self) -> str:
        """What the process printed so far (stdout and stderr)."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@contextmanager
def running_simulator(
    *flags: str,
    host: str = "127.0.0.1",
    start_timeout: float = 20.0,
    stop_timeout: float = 5.0,
    python: str = sys.executable,
) -> Iterator[RunningSimulator]:
    """Run ``python -m thalamus.simulator FLAGS...`` on ``host``, any free port; stop it at exit."""
    with tempfile.TemporaryDirectory(prefix="casesync-sim-") as folder:
        port_file = Path(folder) / "port"
        log_path = Path(folder) / "simulator.log"
        command = _command(python, host, port_file, flags)
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        admin: SimulatorAdmin | None = None
        try:
            port = _wait_for_port(process, port_file, log_path, start_timeout)
            url = f"http://{host}:{port}"
            admin = SimulatorAdmin(url)
            _wait_until_alive(process, admin, log_path, start_timeout)
            yield RunningSimulator(url, port, admin, process, log_path)
        finally:
            if admin is not None:
                admin.close()
            stop(process, stop_timeout)


def stop(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; waits (bounded) for the exit."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def _command(python: str, host: str, port_file: Path, flags: Sequence[str]) -> list[str]:
    return [
        python,
        "-m",
        "thalamus.simulator",
        "--host",
        host,
        "--port",
        "0",
        "--port-file",
        str(port_file),
        *flags,
    ]


def _wait_for_port(
    process: subprocess.Popen[bytes], port_file: Path, log_path: Path, timeout: float
) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = port_file.read_text(encoding="utf-8").strip() if port_file.exists() else ""
        if text.isdigit():
            return int(text)
        _fail_if_exited(process, log_path)
        time.sleep(0.05)
    raise SimulatorStartError(f"no port after {timeout:g}s:\n{_tail(log_path)}")


def _wait_until_alive(
    process: subprocess.Popen[bytes], admin: SimulatorAdmin, log_path: Path, timeout: float
) -> None:
    # The admin health check, not /api/isAlive: faults given at start-up (say --drop-rate 1)
    # apply to the API but must not stop the start-up from completing.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if admin.is_alive():
            return
        _fail_if_exited(process, log_path)
        time.sleep(0.05)
    raise SimulatorStartError(f"not alive after {timeout:g}s:\n{_tail(log_path)}")


def _fail_if_exited(process: subprocess.Popen[bytes], log_path: Path) -> None:
    if process.poll() is not None:
        raise SimulatorStartError(
            f"the simulator exited with {process.returncode}:\n{_tail(log_path)}"
        )


def _tail(log_path: Path, size: int = 4000) -> str:
    try:
        return log_path.read_text(encoding="utf-8", errors="replace")[-size:]
    except OSError:
        return ""
