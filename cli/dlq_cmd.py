"""``casesync dlq``: list, show, replay and purge the events in the dead-letter stream.

Exit codes: 0 done; 1 some dead letters were not found, refused or not reached; 2 usage errors
(and Redis unreachable, see ``cli.main``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

import redis
from rich.table import Table

from cli.output import console, print_json, shorten
from ops import dead_letters, health
from ops.dead_letters import DeadLetter, Pacing, Replayed, ReplayTarget, Verdict
from ops.stream_ids import is_entry_id
from settings import Settings, load_settings

DETAIL_WIDTH = 60
_DURATION = re.compile(r"(\d+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

REPLAY_HELP = """\
Re-validate each dead letter's original event and put it back, unchanged, on the events stream;
the dead letter is deleted in the same atomic step, only once the event is back. An event that
is still invalid is refused and kept. The event keeps its (source, id), and casesync never
records a dead-lettered event as applied, so it is processed anew; if the same event was applied
meanwhile (published again, or replayed twice), it comes back as casesync.update.duplicate and
nothing is sent. A change older than one applied to its case since is superseded (its comments
are still posted). Replay goes in batches and waits while the workers' backlog is high.
"""


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "dlq", help="list, show, replay or purge dead letters"
    )
    commands = parser.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    _register_list(commands)
    _register_show(commands)
    _register_replay(commands)
    _register_purge(commands)


def _register_list(commands: Any) -> None:
    parser = commands.add_parser("list", help="dead letters, oldest first")
    parser.add_argument("--reason", help="only this reason (e.g. invalidEvent)")
    parser.add_argument(
        "--since",
        type=since_time,
        help="only those dead-lettered since an ISO time (UTC unless it says) or for a "
        "duration: 15m, 2h, 1d",
    )
    parser.add_argument(
        "--limit", type=_count, default=100, help="show at most N (default 100; 0 = all)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON array, for scripts")
    parser.set_defaults(run=run_list)


def _register_show(commands: Any) -> None:
    parser = commands.add_parser("show", help="everything of one dead letter")
    parser.add_argument("id", type=entry_id, help="dead-letter id (from dlq list)")
    parser.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    parser.set_defaults(run=run_show)


def _register_replay(commands: Any) -> None:
    parser = commands.add_parser(
        "replay", help="put dead-lettered events back on the events stream", description=REPLAY_HELP
    )
    parser.add_argument("ids", nargs="*", metavar="ID", type=entry_id, help="dead-letter ids")
    parser.add_argument("--all", action="store_true", help="every dead letter")
    parser.add_argument("--reason", help="every dead letter of this reason")
    parser.add_argument(
        "--dry-run", action="store_true", help="re-validate and say what would be replayed"
    )
    parser.add_argument(
        "--batch", type=_positive, default=100, help="events per batch (default 100)"
    )
    parser.add_argument(
        "--max-lag",
        type=_count,
        default=1000,
        help="wait before a batch while more events than this wait for the workers (default 1000)",
    )
    parser.add_argument(
        "--max-wait",
        type=float,
        default=300.0,
        help="seconds to wait for the workers before giving up (default 300)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON array, for scripts")
    parser.set_defaults(run=run_replay)


def _register_purge(commands: Any) -> None:
    parser = commands.add_parser("purge", help="delete dead letters for good")
    parser.add_argument("ids", nargs="*", metavar="ID", type=entry_id, help="dead-letter ids")
    parser.add_argument("--all", action="store_true", help="every dead letter (needs --yes)")
    parser.add_argument("--reason", help="with --all: only those of this reason")
    parser.add_argument("--yes", action="store_true", help="confirm --all")
    parser.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    parser.set_defaults(run=run_purge)


def since_time(text: str, now: float | None = None) -> float:
    """Epoch seconds of ``--since``: an ISO 8601 time (UTC when it has no offset) or a duration."""
    now = time.time() if now is None else now
    duration = _DURATION.fullmatch(text.strip())
    if duration:
        return now - int(duration[1]) * _UNIT_SECONDS[duration[2]]
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an ISO time (2026-11-28T10:15:00Z) nor a duration (15m, 2h, 1d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def entry_id(text: str) -> str:
    if not is_entry_id(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a dead-letter id like 1764324900000-0")
    return text


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _positive(text: str) -> int:
    value = _count(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


# list


def run_list(args: argparse.Namespace) -> int:
    with _connected() as (settings, client):
        found = dead_letters.scan(
            client, settings.dead_letter_stream, since=args.since, reason=args.reason
        )
        # One more than shown, to tell whether there are more.
        letters = list(islice(found, args.limit + 1 if args.limit else None))
    more = bool(args.limit) and len(letters) > args.limit
    letters = letters[: args.limit] if args.limit else letters
    if args.json:
        print_json([letter.as_json() for letter in letters])
    else:
        _print_table(letters, more)
    return 0


def _print_table(letters: list[DeadLetter], more: bool) -> None:
    out = console()
    if not letters:
        out.print("no dead letters")
        return
    table = Table("id", "dead-lettered at", "reason", "case", "event id", "source", "attempts")
    table.add_column("detail", overflow="fold")
    for letter in letters:
        table.add_row(
            letter.id,
            letter.dead_lettered_at,
            letter.reason,
            "" if letter.case_id is None else str(letter.case_id),
            letter.request_id,
            letter.request_source,
            str(letter.attempts),
            shorten(letter.detail, DETAIL_WIDTH),
        )
    out.print(table)
    if more:
        out.print(f"showing the first {len(letters)}; more match (raise --limit, or 0 for all)")


# show


def run_show(args: argparse.Namespace) -> int:
    with _connected() as (settings, client):
        found, _missing = dead_letters.fetch(client, settings.dead_letter_stream, [args.id])
    if not found:
        _complain(f"no dead letter {args.id} in {settings.dead_letter_stream}")
        return 1
    letter = found[0]
    if args.json:
        print_json(letter.as_json())
        return 0
    out = console()
    for name, value in letter.as_json().items():
        if name not in ("event", "errors"):
            out.print(f"{name + ':':<16}{'' if value is None else value}")
    if letter.errors:
        out.print("errors:")
        out.print(json.dumps(letter.errors, indent=2, ensure_ascii=False))
    out.print("event:")
    out.print(_pretty(letter.event))
    return 0


def _pretty(raw: str) -> str:
    try:
        return json.dumps(json.loads(raw), indent=2, ensure_ascii=False)
    except json.JSONDecodeError:
        return raw


# replay


def run_replay(args: argparse.Namespace) -> int:
    if not _selection_is_clear(args, "replay", reason_alone=True):
        return 2
    from tasks.runtime import limits_of

    with _connected() as (settings, client):
        letters, missing = _select(client, settings, args)
        target = ReplayTarget(
            dead_letter_stream=settings.dead_letter_stream,
            events_stream=settings.events_stream,
            limits=limits_of(settings),
        )
        pacing = Pacing(batch=args.batch, max_backlog=args.max_lag, max_wait=args.max_wait)

        def backlog() -> int:
            return health.backlog(client, settings.events_stream, settings.consumer_group)

        results = dead_letters.replay(
            client, letters, target, backlog=backlog, pacing=pacing, dry_run=args.dry_run
        )
        done, finished = _report_replays(results, missing, args.json)
    fine = all(result.verdict in (Verdict.REPLAYED, Verdict.WOULD_REPLAY) for result in done)
    return 0 if fine and finished and not missing else 1


_SAID = {
    Verdict.REPLAYED: "replayed",
    Verdict.WOULD_REPLAY: "would be replayed",
    Verdict.REFUSED: "refused (still invalid)",
    Verdict.GONE: "already gone",
}


def _report_replays(
    results: Iterable[Replayed], missing: list[str], as_json: bool
) -> tuple[list[Replayed], bool]:
    """Print each result as it comes, so a long replay shows progress; the results, and False
    when replay stopped before the end."""
    out = console()
    for entry in missing:
        _complain(f"no dead letter {entry}")
    done: list[Replayed] = []
    finished = True
    try:
        for result in results:
            done.append(result)
            if not as_json:
                out.print(_replay_line(result))
    except dead_letters.Backlogged as exc:
        finished = False
        _complain(f"stopped: {exc}; the rest is still dead-lettered, replay again later")
    if as_json:
        rows = [r.as_json() for r in done] + [{"id": e, "result": "notFound"} for e in missing]
        print_json(rows)
    else:
        counts = Counter(_SAID[r.verdict] for r in done) + Counter({"not found": len(missing)})
        out.print(", ".join(f"{n} {said}" for said, n in counts.items()) or "nothing to replay")
    return done, finished


def _replay_line(result: Replayed) -> str:
    letter = result.letter
    case = "-" if letter.case_id is None else letter.case_id
    what = f"{letter.id} ({letter.reason}, case {case}, event {letter.request_id or '-'})"
    if result.verdict is Verdict.REPLAYED:
        return f"replayed {what} as {result.new_entry_id}"
    if result.verdict is Verdict.WOULD_REPLAY:
        return f"would replay {what}"
    if result.verdict is Verdict.REFUSED:
        return f"refused {what}: still invalid: {result.detail}"
    return f"skipped {what}: {result.detail}"


# purge


def run_purge(args: argparse.Namespace) -> int:
    if not _selection_is_clear(args, "purge", reason_alone=False):
        return 2
    if args.all and not args.yes:
        _complain("purge --all deletes dead letters for good; add --yes to confirm")
        return 2
    with _connected() as (settings, client):
        stream = settings.dead_letter_stream
        if args.all:
            deleted = dead_letters.delete_all(client, stream, reason=args.reason)
            missing: list[str] = []
        else:
            missing = dead_letters.delete(client, stream, args.ids)
            deleted = len(args.ids) - len(missing)
    for entry in missing:
        _complain(f"no dead letter {entry}")
    if args.json:
        print_json({"deleted": deleted, "notFound": missing})
    else:
        console().print(f"deleted {deleted} dead letters from {stream}")
    return 1 if missing else 0


# shared


def _selection_is_clear(args: argparse.Namespace, action: str, *, reason_alone: bool) -> bool:
    """Whether the dead letters are named one way: IDs, or --all and/or (where ``reason_alone``)
    --reason. Says what is wrong when not."""
    problem = None
    bulk = args.all or args.reason is not None
    if args.reason is not None and not (args.all or reason_alone):
        problem = "--reason goes with --all"
    elif args.ids and bulk:
        problem = "give dead-letter IDs or a bulk option, not both"
    elif not args.ids and not bulk:
        problem = (
            "say which: IDs, --all or --reason R" if reason_alone else "say which: IDs or --all"
        )
    if problem:
        _complain(f"{action}: {problem}")
    return problem is None


def _select(
    client: redis.Redis, settings: Settings, args: argparse.Namespace
) -> tuple[Iterable[DeadLetter], list[str]]:
    stream = settings.dead_letter_stream
    if args.ids:
        return dead_letters.fetch(client, stream, args.ids)
    until = dead_letters.newest_id(client, stream)
    if until is None:
        return [], []
    return dead_letters.scan(client, stream, until=until, reason=args.reason), []


@contextlib.contextmanager
def _connected() -> Iterator[tuple[Settings, redis.Redis]]:
    # Imported here: importing ``tasks`` builds the Celery app, which `--help` does not need.
    from tasks.runtime import redis_client

    settings = load_settings()
    with redis_client(settings) as client:
        yield settings, client


def _complain(message: str) -> None:
    print(f"casesync dlq: {message}", file=sys.stderr)
