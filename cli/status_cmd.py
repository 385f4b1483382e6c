"""``casesync status``: how the pipeline is doing, for people, scripts and Docker health checks.

Exit codes: 0 healthy; 1 unhealthy (breaker open, backlog with no worker alive, a pending entry
too old); 2 Redis unreachable or a bad setting.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from typing import Any

from rich.table import Table

from cli.output import console, print_json
from ops.health import Health, Thresholds, Watched, problems, read_health
from settings import load_settings


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "status", help="backlog, workers, retries and dead letters; exits 1 when unhealthy"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    parser.add_argument(
        "--max-pending-age",
        type=float,
        default=Thresholds.max_pending_age,
        metavar="SECONDS",
        help="unhealthy when an entry added longer ago than this is still pending "
        f"(default {Thresholds.max_pending_age:g})",
    )
    parser.add_argument(
        "--alive-idle",
        type=float,
        default=None,
        metavar="SECONDS",
        help="a worker that read the stream within this is alive "
        "(default twice CASESYNC_CLAIM_IDLE)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tasks.runtime import redis_client

    settings = load_settings()
    # Intake reclaims every claim_idle / 2 even with a full queue: twice claim_idle is 4 rounds.
    alive_idle = args.alive_idle if args.alive_idle is not None else 2 * settings.claim_idle
    thresholds = Thresholds(alive_idle=alive_idle, max_pending_age=args.max_pending_age)
    with redis_client(settings) as client:
        health = read_health(client, Watched.from_settings(settings), thresholds, time.time())
    found = problems(health, thresholds)
    if args.json:
        print_json({**health.as_json(), "healthy": not found, "problems": found})
    else:
        _print_health(health, found)
    return 1 if found else 0


def _print_health(health: Health, found: list[str]) -> None:
    out = console()
    table = Table("", "", show_header=False, box=None)
    for name, value in _figures(health):
        table.add_row(name, value)
    out.print(table)
    _print_schedule(health)
    _print_reasons(health)
    _print_workers(health)
    for problem in found:
        out.print(f"UNHEALTHY: {problem}")
    if not found:
        out.print("healthy")


def _figures(health: Health) -> list[tuple[str, str]]:
    age = health.oldest_pending_age
    return [
        ("events stream", f"{health.events_length} entries"),
        ("not yet read (lag)", str(health.lag) + ("" if health.group_exists else " (no group)")),
        ("pending", str(health.pending)),
        ("oldest pending", "-" if age is None else f"{age:.0f} s"),
        ("task queue", f"{health.queue_depth} batches"),
        ("in flight", f"{health.in_flight} entries"),
        ("waiting on the schedule", f"{health.scheduled} entries"),
        ("results stream", f"{health.results_length} entries"),
        ("dead letters", f"{health.dead_letter_length} entries"),
        ("circuit breaker", "closed" if health.breaker_open is None else "OPEN"),
    ]


def _print_schedule(health: Health) -> None:
    if not health.next_due:
        return
    table = Table("entry", "due", "attempts so far", title="Next due on the schedule")
    for waiting in health.next_due:
        due = dt.datetime.fromtimestamp(waiting.due, tz=dt.UTC)
        table.add_row(waiting.entry_id, due.isoformat(timespec="seconds"), str(waiting.attempts))
    console().print(table)


def _print_reasons(health: Health) -> None:
    if not health.dead_letters_by_reason:
        return
    partly = " (newest only)" if health.dead_letters_partly_counted else ""
    table = Table("reason", "dead letters", title=f"Dead letters by reason{partly}")
    for reason, count in health.dead_letters_by_reason.items():
        table.add_row(reason, str(count))
    console().print(table)


def _print_workers(health: Health) -> None:
    if not health.workers:
        console().print("workers: none")
        return
    table = Table("worker (consumer)", "idle", "pending", "alive", title="Workers")
    for worker in health.workers:
        table.add_row(
            worker.name,
            f"{worker.idle:.0f} s",
            str(worker.pending),
            "yes" if worker.alive else "no",
        )
    console().print(table)
