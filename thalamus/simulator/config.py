"""What one simulator process is started with; the CLI flags map onto it one to one."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from thalamus.simulator.faults import FaultSettings

DEFAULT_TOUCHPOINT = "REST01"
# Well-known development values, not secrets: the simulator is for loopback tests.
DEFAULT_TOKEN = "sim-token"
DEFAULT_PRINCIPAL = "operator@example.com"
DEFAULT_PASSWORD = "sim-password"


@dataclass(frozen=True)
class SimulatorConfig:
    """The start-up configuration; ``/_sim/reset`` returns the simulator to it."""

    catalogue: Path | None = None
    faults: FaultSettings = field(default_factory=FaultSettings)
    seed: int | None = None
    # None (or empty) for both turns the touchpoint check off.
    touchpoint: str | None = DEFAULT_TOUCHPOINT
    token: str | None = DEFAULT_TOKEN
    require_login: bool = False
    principal: str = DEFAULT_PRINCIPAL
    password: str = DEFAULT_PASSWORD
    session_ttl: float = 1800.0
    record_size: int = 10_000
