"""``casesync status``: how the pipeline is doing, for people, scripts and Docker health checks.

Exit codes: 0 healthy; 1 unhealthy (Redis refuses writes, breaker open, backlog with no worker
alive, a pending entry stuck); 2 Redis unreachable or a bad setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
from typing import Any

from rich.table import Table

from cli.output import console, print_json
from ops.health import Drain, Health, Thresholds, Watched, problems, read_health, sample_drain
from settings import load_settings

#: Seconds over which the backlog's drain rate is measured.
SAMPLE_SECONDS = 1.0

DESCRIPTION = f"""\
Stream lengths, the backlog and how fast it drains, the batches queued, what waits on the
schedule, dead letters by reason, the circuit breaker, the workers alive, and whether Redis
takes writes (one short-lived key is set to find out).

The backlog is every event not yet ended: not yet read by the group (lag), read and not yet
handed on (pending), leased to a task (in flight), and waiting on the schedule. How fast it
drains is measured over {SAMPLE_SECONDS:g} s (--no-sample skips that): outcomes written less
events arrived, per second. A deep backlog that drains is healthy.

Exits 0 when healthy; 1 when unhealthy: Redis refuses writes (full, or a read-only replica),
the circuit breaker is open, work waits and no worker is alive, or an entry read by a worker
has not been handed on for --max-pending-idle (measured from when it was read, not from when
it was published); 2 when Redis cannot be reached.
"""


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "status",
        help="backlog and how fast it drains, workers, retries, dead letters; exits 1 when "
        "unhealthy",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    parser.add_argument(
        "--no-sample",
        action="store_true",
        help=f"do not spend {SAMPLE_SECONDS:g} s measuring how fast the backlog drains",
    )
    parser.add_argument(
        "--max-pending-idle",
        type=float,
        default=Thresholds.max_pending_idle,
        metavar="SECONDS",
        help="unhealthy when an entry read by a worker this long ago is still pending "
        f"(default {Thresholds.max_pending_idle:g})",
    )
    # The option's earlier name, kept so that existing health checks go on working.
    parser.add_argument(
        "--max-pending-age",
        type=float,
        dest="max_pending_idle",
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
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
    thresholds = Thresholds(alive_idle=alive_idle, max_pending_idle=args.max_pending_idle)
    watched = Watched.from_settings(settings)
    with redis_client(settings) as client:
        drain = None if args.no_sample else sample_drain(client, watched, SAMPLE_SECONDS)
        health = dataclasses.replace(read_health(client, watched, thresholds), drain=drain)
    found = problems(health, thresholds)
    if args.json:
        print_json({**health.as_json(), "healthy": not found, "problems": found})
    else:
        _print_health(health, found, sampled=not args.no_sample)
    return 1 if found else 0


def _print_health(health: Health, found: list[str], *, sampled: bool) -> None:
    out = console()
    table = Table("", "", show_header=False, box=None)
    for name, value in _figures(health, sampled=sampled):
        table.add_row(name, value)
    out.print(table)
    _print_schedule(health)
    _print_reasons(health)
    _print_workers(health)
    for problem in found:
        out.print(f"UNHEALTHY: {problem}")
    if not found:
        out.print("healthy")


def _figures(health: Health, *, sampled: bool) -> list[tuple[str, str]]:
    idle = health.longest_pending_idle
    return [
        ("events stream", f"{health.events_length} entries"),
        ("not yet read (lag)", str(health.lag) + ("" if health.group_exists else " (no group)")),
        ("pending", str(health.pending)),
        ("longest idle pending", "-" if idle is None else f"{idle:.0f} s"),
        ("task queue", f"{health.queue_depth} batches"),
        ("in flight", f"{health.in_flight} entries"),
        ("waiting on the schedule", f"{health.scheduled} entries"),
        ("backlog", f"{health.backlog} entries"),
        ("draining", _draining(health.drain, health.backlog, sampled=sampled)),
        ("results stream", f"{health.results_length} entries"),
        ("dead letters", f"{health.dead_letter_length} entries"),
        ("circuit breaker", "closed" if health.breaker_open is None else "OPEN"),
        ("Redis writes", _writes(health.redis_refuses_writes)),
    ]


def _writes(refused: str | None) -> str:
    return "accepted" if refused is None else f"REFUSED: {refused}"


def _draining(drain: Drain | None, backlog: int, *, sampled: bool) -> str:
    if drain is None:
        return "unknown (the server keeps no counts before Redis 7)" if sampled else "not sampled"
    rates = f"{drain.ending_per_second:.1f}/s ended, {drain.arriving_per_second:.1f}/s arrived"
    empty_in = drain.empty_in(backlog)
    if empty_in is not None:
        return f"{drain.draining_per_second:.1f}/s ({rates}), empty in about {_duration(empty_in)}"
    if drain.draining_per_second < 0:
        return f"growing {-drain.draining_per_second:.1f}/s ({rates})"
    return f"0/s ({rates})"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


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
