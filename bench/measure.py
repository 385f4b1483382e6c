"""What a benchmark run measures of the processes under test, read from /proc and Redis.

- CPU: utime + stime of a process and all its descendants (``/proc/<pid>/stat``), sampled
  before and after the measured window; the difference is the work of that window.
- Memory: ``VmHWM`` (peak resident set) of each of those processes, summed; ``VmRSS`` (resident
  now) for the soak's samples.
- Redis: ``INFO commandstats`` calls (commands run inside a Lua script or a MULTI count one by
  one there) and ``INFO stats`` ``total_reads_processed`` (one per request a client sends: a
  pipeline, a MULTI/EXEC block or a script is one), less what the harness itself sent.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (field 3 onwards)."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def descendants(root: int) -> list[int]:
    """``root`` and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_seconds(roots: Sequence[int]) -> float:
    """User plus system CPU time so far of the processes ``roots`` and their descendants
    (children already reaped included, through the parent's cutime and cstime)."""
    ticks = 0
    for root in roots:
        for pid in descendants(root):
            fields = _stat_fields(pid)
            if fields is not None:
                # utime, stime, cutime, cstime are fields 14-17 of stat (11-14 here, 0-based).
                ticks += sum(int(value) for value in fields[11:15])
    return ticks / CLOCK_TICKS


def peak_memory_kb(roots: Sequence[int]) -> int:
    """Sum of ``VmHWM`` (peak resident memory, KiB) of the processes and their descendants."""
    return _status_sum(roots, "VmHWM:")


def resident_memory_kb(roots: Sequence[int]) -> int:
    """Sum of ``VmRSS`` (resident memory now, KiB) of the processes and their descendants."""
    return _status_sum(roots, "VmRSS:")


def _status_sum(roots: Sequence[int], field_name: str) -> int:
    """Sum of one KiB field of ``/proc/<pid>/status`` over the processes and their descendants."""
    total = 0
    for root in roots:
        for pid in descendants(root):
            try:
                status = (PROC / str(pid) / "status").read_text()
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
            for line in status.splitlines():
                if line.startswith(field_name):
                    total += int(line.split()[1])
    return total


@dataclass(frozen=True)
class RedisCounters:
    commands: int
    reads: int

    def __sub__(self, other: RedisCounters) -> RedisCounters:
        return RedisCounters(self.commands - other.commands, self.reads - other.reads)


def redis_counters(client: redis.Redis) -> RedisCounters:
    """Commands run and client requests read by the server so far.

    Two round trips of the harness itself (this call's two INFO); :class:`Harness` counts them.
    """
    commandstats: Any = client.info("commandstats")
    stats: Any = client.info("stats")
    commands = sum(int(entry["calls"]) for entry in commandstats.values())
    return RedisCounters(commands, int(stats["total_reads_processed"]))


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile (``share`` in 0..1); NaN of nothing."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


def entry_ms(entry_id: str) -> int:
    """The Redis clock time (epoch ms) at which a stream entry was added."""
    return int(entry_id.partition("-")[0])


@dataclass(frozen=True)
class Recovery:
    """What a user sees after a worker was killed mid-load and a new one started at once."""

    events: int
    #: From the new worker's start until every event had an outcome; the bound when it ran out.
    seconds: float
    complete: bool
    bound: float
    outcomes_at_kill: int
    missing: int
    #: Events with more than one outcome.
    doubled: int
    #: Events whose comment is on their case more than once.
    posted_twice: int

    def shown(self) -> str:
        """The seconds, or ``> bound`` when not every event got its outcome in time."""
        return f"{self.seconds:.1f}" if self.complete else f"> {self.bound:g}"

    def describe(self) -> str:
        return (
            f"every outcome {self.shown()} s after a new worker started "
            f"(killed at {self.outcomes_at_kill} of {self.events} outcomes); "
            f"missing {self.missing}, two outcomes {self.doubled}, "
            f"comments posted twice {self.posted_twice}"
        )


@dataclass
class Measurement:
    """One side measured at one API latency: the columns of the report."""

    name: str
    side: str  # "bare httpx" | "plain consumer" | "pipeline"
    latency_ms: float
    events: int
    seconds: float
    cpu_seconds: float
    peak_memory_kb: int
    latencies_ms: list[float]
    processes: int
    redis: RedisCounters | None = None
    not_applied: int = 0
    notes: str = ""
    #: Only on the crash-recovery row; its figures reach the JSON through ``notes``.
    recovery: Recovery | None = None

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else math.nan

    @property
    def cpu_ms_per_event(self) -> float:
        return 1000 * self.cpu_seconds / self.events if self.events else math.nan

    def latency(self, share: float) -> float:
        return percentile(self.latencies_ms, share)

    def redis_per_event(self) -> tuple[float, float] | None:
        """(commands, round trips) per event, or None for a side that uses no Redis."""
        if self.redis is None or not self.events:
            return None
        return self.redis.commands / self.events, self.redis.reads / self.events

    def summary(self) -> dict[str, Any]:
        per_event = self.redis_per_event()
        return {
            "name": self.name,
            "side": self.side,
            "latency_ms": self.latency_ms,
            "events": self.events,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.events_per_second, 1),
            "cpu_ms_per_event": round(self.cpu_ms_per_event, 3),
            "latency_p50_ms": self.latency(0.50),
            "latency_p95_ms": self.latency(0.95),
            "latency_p99_ms": self.latency(0.99),
            "peak_memory_mb": round(self.peak_memory_kb / 1024, 1),
            "processes": self.processes,
            "redis_commands_per_event": None if per_event is None else round(per_event[0], 2),
            "redis_round_trips_per_event": None if per_event is None else round(per_event[1], 2),
            "not_applied": self.not_applied,
            "notes": self.notes,
        }
