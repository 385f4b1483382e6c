"""The soak's report: plain text lines for people (they read well in a log file too) and a JSON
document for scripts and for comparing runs."""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.soak import SoakResult
from bench.soak_ledger import Reconciliation, WindowLatency
from bench.soak_plan import Window


def lines(result: SoakResult) -> list[str]:
    """The whole report, one line each."""
    return [
        *_setting(result),
        *_books(result.reconciliation, result),
        "",
        "latency, publish to first outcome, by the window the event was published in:",
        *_windows(result.windows, result.options.plan.windows),
        "",
        "worker resident memory (VmRSS), each process in each worker slot:",
        *_workers(result),
        "",
        _redis(result.redis),
        f"RESULT: {'PASS' if result.ok else 'FAIL'}"
        + ("" if result.ok else " (events lost, doubled, or comments posted twice/missing)"),
    ]


def _setting(result: SoakResult) -> list[str]:
    options = result.options
    capacity = (
        f"half of {result.capacity:,.0f} events/s measured with no faults"
        if result.capacity is not None
        else "rate given"
    )
    return [
        f"soak: {options.duration:g} s at {result.rate:,.0f} events/s ({capacity}), "
        f"{options.workers} workers, API latency {options.latency_ms:g} ms, "
        f"faults {options.error_rate_503:.1%} 503 and {options.apply_then_drop_rate:.1%} "
        "applied then answer dropped",
        "restarts: "
        + (
            ", ".join(f"{r.at:g} s {r.signal_name} worker {r.worker}" for r in result.restarts)
            or "none"
        ),
    ]


def _books(books: Reconciliation, result: SoakResult) -> list[str]:
    drained = (
        f"every outcome {result.drain_seconds:.1f} s after publishing stopped"
        if result.drained
        else f"not every outcome within {result.options.drain_bound:g} s after publishing stopped"
    )
    kinds = ", ".join(f"{kind} {count:,}" for kind, count in sorted(books.by_type.items()))
    reasons = ", ".join(f"{r} {n:,}" for r, n in sorted(books.dead_letter_reasons.items()))
    return [
        f"events in {books.events_in:,}, outcomes out {books.outcomes_out:,} "
        f"({books.outcome_entries:,} outcome entries): missing {books.missing:,}, "
        f"doubled {books.doubled:,}, not of this run {books.unexpected:,}; {drained}",
        f"first outcomes: {kinds or 'none'}; dead letters by reason: {reasons or 'none'}",
        f"comments posted twice {books.comments.posted_twice:,}, "
        f"missing {books.comments.missing:,}",
    ]


def _windows(found: list[WindowLatency], planned: list[Window]) -> list[str]:
    rows = [
        f"  {'window':<16} {'restart at its start':<22} {'events':>9} {'p50 ms':>8} "
        f"{'p99 ms':>9} {'max ms':>9}"
    ]
    for latency, window in zip(found, planned, strict=True):
        restart = window.restart
        what = "-" if restart is None else f"{restart.signal_name} worker {restart.worker}"
        span = f"{window.start:g}-{window.end:g} s"
        rows.append(
            f"  {span:<16} {what:<22} {latency.events:>9,} {_ms(latency.p50_ms):>8} "
            f"{_ms(latency.p99_ms):>9} {_ms(latency.max_ms):>9}"
        )
    return rows


def _workers(result: SoakResult) -> list[str]:
    rows = [
        f"  {'worker':<8} {'started':>9} {'after warm-up':>14} {'at end':>8} {'peak':>8}  stopped"
    ]
    for item in result.workers:
        summary = item.summary()
        stop = summary["stopped_by"]
        if summary["stop_seconds"] is not None:
            stop += f" (exited after {summary['stop_seconds']:g} s, code {summary['exit_code']})"
        rows.append(
            f"  {item.slot}.{item.number:<6} {summary['started_s']:>8g}s "
            f"{_megabytes(summary['rss_after_warmup_mb']):>14} "
            f"{_megabytes(summary['rss_at_end_mb']):>8} {_megabytes(summary['rss_peak_mb']):>8}  "
            f"{stop}"
        )
    return rows


def _redis(redis: dict[str, Any]) -> str:
    before, after = redis.get("after_warmup", {}), redis.get("at_end", {})
    peak = after.get("used_memory_peak_mb")
    return (
        f"Redis used memory {before.get('used_memory_mb')} MB after warm-up, "
        f"{after.get('used_memory_mb')} MB at the end (peak {peak} MB); "
        f"results stream {after.get('results_length', 0):,} entries "
        f"(about {after.get('results_stream_mb')} MB), "
        f"dead letters {after.get('dead_letters', 0):,}"
    )


def document(result: SoakResult) -> dict[str, Any]:
    """The JSON of the run: settings, books, windows, workers, Redis."""
    options = {
        key: str(value) if isinstance(value, Path) else value
        for key, value in asdict(result.options).items()
    }
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "options": options,
        "capacity_events_per_second": _round(result.capacity),
        "rate_events_per_second": round(result.rate, 1),
        "published_seconds": round(result.published_seconds, 1),
        "drain_seconds": round(result.drain_seconds, 1),
        "drained": result.drained,
        "ok": result.ok,
        "books": _plain(asdict(result.reconciliation)),
        "restarts": [
            {"at_s": r.at, "worker": r.worker, "signal": r.signal_name} for r in result.restarts
        ],
        "windows": [_plain(asdict(window)) for window in result.windows],
        "workers": [item.summary() for item in result.workers],
        "redis": result.redis,
    }


def write_json(path: Path, result: SoakResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document(result), indent=2) + "\n", encoding="utf-8")


def _plain(value: Any) -> Any:
    """NaN (a window without events) as null, so the file is strict JSON."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 1)
    return value


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f}"


def _megabytes(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} MB"
