"""Fixtures: one simulator process per module (reset before each test), and HTTP helpers."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.thalamus.samples import TOUCHPOINT_HEADERS
from thalamus.simulator.process import RunningSimulator, running_simulator


@pytest.fixture(scope="module")
def simulator_process() -> Iterator[RunningSimulator]:
    with running_simulator("--seed", "7") as sim:
        yield sim


@pytest.fixture
def simulator(simulator_process: RunningSimulator) -> RunningSimulator:
    """The module's simulator, back in its start-up state."""
    simulator_process.admin.reset()
    return simulator_process


@pytest.fixture
def api(simulator: RunningSimulator) -> Iterator[httpx.Client]:
    """A plain HTTP client of the simulator carrying the default touchpoint credentials."""
    with httpx.Client(base_url=simulator.url, headers=TOUCHPOINT_HEADERS, timeout=10.0) as client:
        yield client
