"""The soak's workers: started in their slots, sampled for resident memory, and restarted with
a signal (in a thread, so that publishing goes on meanwhile). Each process in a slot is an
:class:`Incarnation`, with its memory after warm-up, at its end and at its peak."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bench.measure import resident_memory_kb
from bench.scenarios import Bed, connection_env
from bench.soak_plan import Restart
from ops import processes


class FleetOptions(Protocol):
    """What the fleet needs of the soak's options."""

    @property
    def workers(self) -> int: ...
    @property
    def warmup(self) -> float: ...
    @property
    def stop_timeout(self) -> float: ...


@dataclass
class Incarnation:
    """One worker process in one slot, from its start until it was stopped or the run ended."""

    slot: int
    number: int
    process: subprocess.Popen[bytes]
    #: Seconds into the soak (negative: started before it).
    started: float
    rss_warm_kb: int | None = None
    rss_last_kb: int = 0
    rss_peak_kb: int = 0
    stopped_by: str = ""
    #: Seconds from the signal to the process's exit.
    stop_seconds: float | None = None
    exit_code: int | None = None

    def sample(self, now: float, warmup: float) -> None:
        if self.process.poll() is not None:
            return  # /proc no longer knows it
        rss = resident_memory_kb([self.process.pid])
        if not rss:
            return
        self.rss_last_kb = rss
        self.rss_peak_kb = max(self.rss_peak_kb, rss)
        if self.rss_warm_kb is None and now - self.started >= warmup:
            self.rss_warm_kb = rss

    def summary(self) -> dict[str, Any]:
        return {
            "worker": self.slot,
            "incarnation": self.number,
            "started_s": round(self.started, 1),
            "rss_after_warmup_mb": mb(self.rss_warm_kb),
            "rss_at_end_mb": mb(self.rss_last_kb),
            "rss_peak_mb": mb(self.rss_peak_kb),
            "stopped_by": self.stopped_by or "end of run",
            "stop_seconds": None if self.stop_seconds is None else round(self.stop_seconds, 1),
            "exit_code": self.exit_code,
        }


class Fleet:
    """The soak's workers: started, sampled, restarted (in a thread, so publishing goes on)."""

    def __init__(self, bed: Bed, logs: Path, options: FleetOptions, clock: Callable[[], float]):
        self._bed, self._logs, self._options, self._clock = bed, logs, options, clock
        self._lock = threading.Lock()
        self.current: list[Incarnation] = []
        self.all: list[Incarnation] = []
        self._restarting: threading.Thread | None = None

    def start(self) -> None:
        for slot in range(self._options.workers):
            self.current.append(self._start(slot))

    def _start(self, slot: int) -> Incarnation:
        number = sum(1 for item in self.all if item.slot == slot)
        log = (self._logs / f"soak-worker{slot}-{number}.log").open("wb")
        try:
            process = processes.start_process(
                processes.worker_command(), connection_env(self._bed), log
            )
        finally:
            log.close()  # the child holds its own copy
        incarnation = Incarnation(slot, number, process, self._clock())
        with self._lock:
            self.all.append(incarnation)
        return incarnation

    def rebase(self, seconds: float) -> None:
        """The soak's clock moved on by ``seconds``: start times count from the new zero."""
        with self._lock:
            for incarnation in self.all:
                incarnation.started -= seconds

    def sample(self) -> None:
        with self._lock:
            live = list(self.current)
        for incarnation in live:
            incarnation.sample(self._clock(), self._options.warmup)

    def restart(self, restart: Restart) -> None:
        """Stop the slot's worker with the restart's signal, then start a new one (in a thread)."""
        self.wait_for_restart()
        self._restarting = threading.Thread(target=self._replace, args=(restart,), daemon=True)
        self._restarting.start()

    def wait_for_restart(self) -> None:
        if self._restarting is not None:
            self._restarting.join(self._options.stop_timeout + 60.0)

    def _replace(self, restart: Restart) -> None:
        old = self.current[restart.worker]
        old.sample(self._clock(), self._options.warmup)  # its last figure: /proc forgets it
        old.stopped_by = f"{restart.signal_name} at {restart.at:g} s"
        began = time.monotonic()
        if restart.signal_name == "SIGKILL":
            processes.kill_process(old.process)
        else:
            processes.stop_process(old.process, timeout=self._options.stop_timeout)
        old.stop_seconds = time.monotonic() - began
        old.exit_code = old.process.returncode
        new = self._start(restart.worker)
        with self._lock:
            self.current[restart.worker] = new

    def stop_all(self) -> None:
        """Stop every worker (SIGTERM, then SIGKILL), all at the same time."""
        self.wait_for_restart()
        stopping = [
            threading.Thread(target=processes.stop_process, args=(item.process,))
            for item in self.current
        ]
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join(processes.STOP_TIMEOUT + 15.0)


def mb(kb: int | None) -> float | None:
    return None if kb is None else round(kb / 1024, 1)
