"""What a soak run will do, decided before it starts: how long, when each worker restart comes
(which worker, which signal), and the windows its latencies are reported in.

Pure: no processes, no clock. ``casesync bench --soak`` carries the plan out (:mod:`bench.soak`).
"""

from __future__ import annotations

import math
import re
import signal
from dataclasses import dataclass

#: A duration as the command line takes it: ``30m``, ``90s``, ``1h30m``, or a bare number of
#: seconds (``45``).
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[hms])+|\d+(?:\.\d+)?")
_PART = re.compile(r"(\d+(?:\.\d+)?)([hms])")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str) -> float:
    """Seconds of ``text`` (``30m``, ``90s``, ``1h30m``, ``2.5m``, ``45``); ValueError if bad."""
    cleaned = text.strip().lower()
    if not _DURATION.fullmatch(cleaned):
        raise ValueError(f"not a duration: {text!r} (say 30m, 90s, 1h30m)")
    parts = _PART.findall(cleaned) or [(cleaned, "s")]
    total = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
    if total <= 0:
        raise ValueError(f"not a duration: {text!r} (it must be longer than 0)")
    return total


@dataclass(frozen=True)
class Restart:
    """One planned restart: ``at`` seconds after the soak began, ``worker`` (its slot) gets
    ``signum``, and a new worker takes its slot."""

    at: float
    worker: int
    signum: signal.Signals

    @property
    def signal_name(self) -> str:
        return self.signum.name


@dataclass(frozen=True)
class Window:
    """A stretch of the soak whose published events' latencies are reported together."""

    number: int
    start: float
    end: float
    #: The restart at its start (None for the first window).
    restart: Restart | None


def restart_plan(duration: float, every: float, workers: int) -> list[Restart]:
    """A restart every ``every`` seconds (none at the start or at the very end), the workers in
    turn; each round over the workers alternates the signal (SIGTERM first, a warm shut-down,
    then SIGKILL, a crash), so every worker is stopped both ways in a long enough run."""
    plan: list[Restart] = []
    number = 1
    while number * every < duration:
        turn = number - 1
        signum = signal.SIGTERM if (turn // workers) % 2 == 0 else signal.SIGKILL
        plan.append(Restart(number * every, turn % workers, signum))
        number += 1
    return plan


def windows(duration: float, every: float, restarts: list[Restart]) -> list[Window]:
    """Windows of ``every`` seconds (the last one may be shorter), each starting with the
    restart planned at its start."""
    at_start = {restart.at: restart for restart in restarts}
    count = math.ceil(duration / every)
    return [
        Window(n, n * every, min(duration, (n + 1) * every), at_start.get(n * every))
        for n in range(count)
    ]


def window_of(seconds: float, every: float, count: int) -> int:
    """The window number of a moment ``seconds`` after the start (clamped into the run)."""
    return max(0, min(count - 1, int(seconds // every)))


@dataclass(frozen=True)
class SoakPlan:
    duration: float
    #: Seconds between two restarts; also the length of a latency window.
    every: float
    workers: int = 2

    @property
    def restarts(self) -> list[Restart]:
        return restart_plan(self.duration, self.every, self.workers)

    @property
    def windows(self) -> list[Window]:
        return windows(self.duration, self.every, self.restarts)
