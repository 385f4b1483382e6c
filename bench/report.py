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


@dataclass(frozen=True)
class Target:
    name: str
    measured: float
    limit: float
    higher_is_better: bool
    detail: str

    @property
    def holds(self) -> bool | None:
        if math.isnan(self.measured) or math.isnan(self.limit):
            return None
        return self.measured >= self.limit if self.higher_is_better else self.measured <= self.limit

    def verdict(self) -> str:
        return {True: "PASS", False: "MISS", None: "not measured"}[self.holds]

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


def targets(
    measurements: Sequence[Measurement], concurrency: int, high_latency_ms: float
) -> list[Target]:
    """The five targets of the issue, each a ratio of figures of this same run."""

    def at(name: str, latency: float, what: str) -> float:
        return _value(find(measurements, name, latency), what)

    pipe_0 = at("pipeline threads", 0, "events_per_second")
    pipe_hi = at("pipeline threads", high_latency_ms, "events_per_second")
    ceiling = concurrency / (high_latency_ms / 1000) if high_latency_ms else math.nan
    paced = find(measurements, "pipeline threads paced", 0)
    return [
        Target(
            "pipeline >= 0.8 x plain consumer (events/s, 0 ms)",
            pipe_0,
            0.8 * at("plain consumer", 0, "events_per_second"),
            True,
            "events/s",
        ),
        Target(
            f"one worker >= 0.9 x concurrency / latency ({high_latency_ms:g} ms)",
            pipe_hi,
            0.9 * ceiling,
            True,
            f"events/s; ceiling {ceiling:g}",
        ),
        Target(
            "CPU per event <= 2 x bare httpx (0 ms)",
            at("pipeline threads", 0, "cpu_ms_per_event"),
            2 * at("bare httpx", 0, "cpu_ms_per_event"),
            False,
            "CPU ms/event",
        ),
        Target(
            "p99 publish-to-outcome <= 50 ms at half the max rate (0 ms)",
            math.nan if paced is None else paced.latency(0.99),
            50.0,
            False,
            "ms" if paced is None else f"ms, paced at {paced.events_per_second:.0f} events/s",
        ),
        Target(
            f"two workers >= 1.8 x one worker ({high_latency_ms:g} ms)",
            at("pipeline threads x2", high_latency_ms, "events_per_second"),
            1.8 * pipe_hi,
            True,
            "events/s",
        ),
    ]


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
            _cell(target.measured),
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
