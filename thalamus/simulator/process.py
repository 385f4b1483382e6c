"""The simulator as a subprocess on loopback, for the demo, tests and benchmarks."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

from thalamus.simulator.admin import SimulatorAdmin

START_TIMEOUT = 20.0


@dataclass
class RunningSimulator:
    url: str
    admin: SimulatorAdmin
    touchpoint: str
    token: str
    process: subprocess.Popen[bytes]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def running_simulator(
    *args: str, touchpoint: str = "REST01", token: str = "sim-token"
) -> Iterator[RunningSimulator]:
    """Start ``casesync simulator`` with ``args`` on a free loopback port; always stop it."""
    port = free_port()
    argv = [sys.executable, "-m", "thalamus.simulator", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--touchpoint", touchpoint, "--token", token, *args]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    admin = SimulatorAdmin(url)
    try:
        _wait_until_alive(url, process)
        yield RunningSimulator(url, admin, touchpoint, token, process)
    finally:
        admin.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if process.stderr is not None:
            process.stderr.close()


def _wait_until_alive(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            error = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise RuntimeError(f"the simulator exited at start: {error[-2000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/_sim/faults", timeout=1.0).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"the simulator did not answer within {START_TIMEOUT} s")
