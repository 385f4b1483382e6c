"""The report of a run: the table of measurements, the targets as ratios, the JSON file."""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.measure import Measurement

#: The measured columns: (title, key of Measurement.summary()).
COLUMNS = (
    ("events/s", "events_per_second"),
    ("CPU ms/event", "cpu_ms_per_event"),
    ("p50 ms", "latency_p50_ms"),
    ("p95 ms", "latency_p95_ms"),
    ("p99 ms", "latency_p99_ms"),
    ("peak MB", "peak_memory_mb"),
    ("Redis cmds/event", "redis_commands_per_event"),
    ("Redis RTT/event", "redis_round_trips_per_event"),
)


#: Bounds of the targets that are not ratios.
ROUND_TRIPS_PER_EVENT = 2.5
PEAK_MB_PER_WORKER = 150.0
RECOVERY_SECONDS = 120.0


@dataclass(frozen=True)
class Target:
    name: str
    measured: float
    limit: float
    higher_is_better: bool
    detail: str
    #: The wait ran out: the true figure is above ``measured``, which is where it stopped.
    at_least: bool = False

    @property
    def holds(self) -> bool | None:
        if math.isnan(self.measured) or math.isnan(self.limit):
            return None
        if self.at_least:
            # Below the limit, a figure known only to exceed ``measured`` may fall either side.
            return self.higher_is_better if self.measured >= self.limit else None
        return self.measured >= self.limit if self.higher_is_better else self.measured <= self.limit

    def verdict(self) -> str:
        return {True: "PASS", False: "MISS", None: "not measured"}[self.holds]

    def shown(self) -> str:
        return f"> {_cell(self.measured)}" if self.at_least else _cell(self.measured)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "measured": round(self.measured, 3),
            "limit": round(self.limit, 3),
            "verdict": self.verdict(),
            "detail": self.detail,
        }


def find(measurements: Sequence[Measurement], name: str, latency_ms: float) -> Measurement | None:
    for item in measurements:
        if item.name == name and item.latency_ms == latency_ms:
            return item
    return None


def _value(measurement: Measurement | None, what: str) -> float:
    return math.nan if measurement is None else float(getattr(measurement, what))


def targets(measurements: Sequence[Measurement], high_latency_ms: float) -> list[Target]:
    """The targets of the issue, each a ratio or a bound of figures of this same run."""

    def at(name: str, latency: float, what: str) -> float:
        return _value(find(measurements, name, latency), what)

    # A run at 0 ms only (--quick) has no second latency to compare at.
    high = [_versus_plain(measurements, high_latency_ms)] if high_latency_ms else []
    return [
        _versus_plain(measurements, 0.0),
        *high,
        Target(
            "CPU per event <= 2 x bare httpx (0 ms)",
            at("pipeline threads", 0, "cpu_ms_per_event"),
            2 * at("bare httpx", 0, "cpu_ms_per_event"),
            False,
            "CPU ms/event",
        ),
        _round_trips(find(measurements, "pipeline threads", 0)),
        _paced_p99(find(measurements, "pipeline threads paced", 0)),
        Target(
            f"two workers >= 1.8 x one worker ({high_latency_ms:g} ms)",
            at("pipeline threads x2", high_latency_ms, "events_per_second"),
            1.8 * at("pipeline threads", high_latency_ms, "events_per_second"),
            True,
            "events/s",
        ),
        _peak_memory(measurements),
        recovery_target(measurements),
    ]


def _versus_plain(measurements: Sequence[Measurement], latency: float) -> Target:
    pipe = find(measurements, "pipeline threads", latency)
    plain = find(measurements, "plain consumer", latency)
    return Target(
        f"pipeline >= 0.8 x plain consumer (events/s, {latency:g} ms)",
        _value(pipe, "events_per_second"),
        0.8 * _value(plain, "events_per_second"),
        True,
        "events/s",
    )


def _round_trips(pipe: Measurement | None) -> Target:
    per_event = None if pipe is None else pipe.redis_per_event()
    return Target(
        f"Redis round trips per event <= {ROUND_TRIPS_PER_EVENT:g} (0 ms)",
        math.nan if per_event is None else per_event[1],
        ROUND_TRIPS_PER_EVENT,
        False,
        "Redis RTT/event, pipeline threads",
    )


def _paced_p99(paced: Measurement | None) -> Target:
    return Target(
        "p99 publish-to-outcome <= 50 ms at half the max rate (0 ms)",
        math.nan if paced is None else paced.latency(0.99),
        50.0,
        False,
        "ms" if paced is None else f"ms, paced at {paced.events_per_second:.0f} events/s",
    )


def _peak_memory(measurements: Sequence[Measurement]) -> Target:
    # The single-worker threads rows: the default deployment, one worker process each.
    peaks = [m.peak_memory_kb / 1024 for m in measurements if m.name == "pipeline threads"]
    return Target(
        f"peak memory per worker <= {PEAK_MB_PER_WORKER:g} MB",
        max(peaks, default=math.nan),
        PEAK_MB_PER_WORKER,
        False,
        "MB, VmHWM of one threads worker, its highest run",
    )


def recovery_target(measurements: Sequence[Measurement]) -> Target:
    """Seconds from a new worker's start until every event has its outcome, after a kill -9."""
    name = (
        "after kill -9 mid-load, every event has its outcome "
        f"<= {RECOVERY_SECONDS:g} s after a worker runs again"
    )
    found = next((m.recovery for m in measurements if m.recovery is not None), None)
    if found is None:
        return Target(name, math.nan, RECOVERY_SECONDS, False, "s")
    ran_out = "" if found.complete else f", the wait ran out at {found.bound:g} s"
    detail = (
        f"s{ran_out}; missing {found.missing}, two outcomes {found.doubled}, "
        f"comments posted twice {found.posted_twice}"
    )
    return Target(name, found.seconds, RECOVERY_SECONDS, False, detail, at_least=not found.complete)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:,.1f}" if value >= 100 else f"{value:.2f}"
    return str(value)


def table(measurements: Sequence[Measurement]) -> Table:
    result = Table(title="casesync benchmark (one run, same machine)")
    result.add_column("side")
    result.add_column("API ms", justify="right")
    result.add_column("events", justify="right")
    for title, _ in COLUMNS:
        result.add_column(title, justify="right")
    for item in measurements:
        row = item.summary()
        cells = [_cell(row[key]) for _, key in COLUMNS]
        result.add_row(item.name, f"{item.latency_ms:g}", str(item.events), *cells)
    return result


def targets_table(found: Sequence[Target]) -> Table:
    result = Table(title="Targets (ratios of this run)")
    for title in ("target", "measured", "limit", "", "unit"):
        result.add_column(title)
    for target in found:
        result.add_row(
            target.name,
            target.shown(),
            _cell(target.limit),
            target.verdict(),
            target.detail,
        )
    return result


def markdown(measurements: Sequence[Measurement]) -> str:
    """The table as Markdown, for the README."""
    titles = ["side", "API ms", "events", *[title for title, _ in COLUMNS]]
    lines = ["| " + " | ".join(titles) + " |", "|" + " --- |" * len(titles)]
    for item in measurements:
        row = item.summary()
        cells = [item.name, f"{item.latency_ms:g}", str(item.events)]
        cells += [_cell(row[key]) for _, key in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_report(
    console: Console, measurements: Sequence[Measurement], found: Sequence[Target]
) -> None:
    console.print(table(measurements))
    console.print(targets_table(found))
    for item in measurements:
        if item.not_applied:
            console.print(f"[red]{item.name}: {item.not_applied} events were not applied[/red]")
        if item.recovery is not None:
            clean = item.recovery.complete and not item.recovery.doubled
            colour = "green" if clean and not item.recovery.posted_twice else "red"
            console.print(f"[{colour}]{item.name}: {item.recovery.describe()}[/{colour}]")


def write_json(
    path: Path,
    measurements: Sequence[Measurement],
    found: Sequence[Target],
    options: dict[str, Any],
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": _cpus(), "python": platform.python_version()},
        "options": options,
        "measurements": [item.summary() for item in measurements],
        "targets": [target.summary() for target in found],
    }
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def _cpus() -> int:
    return len(os.sched_getaffinity(0))
