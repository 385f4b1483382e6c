"""``casesync trace``: what casesync did with the events of a case, or with one event.

Exit codes: 0 a trace was found; 1 none (one line says so); 2 Redis unreachable or a bad setting
(see ``cli.main``).
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from cli.output import console, print_json
from ops.trace import ATTEMPT, WAIT, Step, Timeline, case_timeline, entry_timeline, event_timeline
from settings import Settings, load_settings

WAITS = {
    "busyCase": "another task was updating the case",
    "breaker": "the circuit breaker was open",
    "redisFault": "Redis failed",
}
READ_BACKS = {
    "tookEffect": "read the case back: the earlier update had taken effect, not sent again",
    "notApplied": "read the case back: the earlier update had not taken effect",
    "readFailed": "reading the case back failed",
}


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "trace",
        help="what casesync did with a case's events, or one event: arrival, attempts, outcome",
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--case", type=int, metavar="ID", help="every event of this case")
    which.add_argument(
        "--event", nargs=2, metavar=("SOURCE", "ID"), help="one event, by its source and id"
    )
    which.add_argument("--entry", metavar="ID", help="one entry of the events stream, by its id")
    parser.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tasks.runtime import redis_client

    settings = load_settings()
    with redis_client(settings) as client:
        if args.case is not None:
            found: Timeline | None = case_timeline(client, args.case)
        elif args.event is not None:
            found = event_timeline(client, *args.event)
        else:
            found = entry_timeline(client, settings.events_stream, args.entry)
    if found is None or not found.steps:
        print(_nothing(args, settings))
        return 1
    if args.json:
        print_json(found.as_json())
    else:
        _print_timeline(found)
    return 0


def _nothing(args: argparse.Namespace, settings: Settings) -> str:
    if args.case is not None:
        what = f"case {args.case}"
    elif args.event is not None:
        what = f"event {args.event[0]} {args.event[1]}"
    else:
        what = f"entry {args.entry}"
    off = "; tracing is off (CASESYNC_TRACE_LENGTH=0)" if settings.trace_length == 0 else ""
    return (
        f"no trace of {what}: none seen within CASESYNC_TRACE_TTL ({settings.trace_ttl:g} s){off}"
    )


def _print_timeline(timeline: Timeline) -> None:
    out = console()
    events = timeline.events()
    numbers = {event.entry: str(n) for n, event in enumerate(events, start=1)}
    table = Table(
        "#",
        "entry",
        "source",
        "id",
        "event time",
        "outcome",
        "reason",
        "attempts",
        title=f"Events of case {timeline.case_id}",
    )
    for event in events:
        table.add_row(
            numbers[event.entry],
            event.entry,
            event.source or "-",
            event.event_id or "-",
            event.event_time or "-",
            event.outcome or "(not yet)",
            event.reason or "",
            str(event.attempts),
        )
    out.print(table)
    steps = Table("time (UTC)", "#", "step", "what happened", title="Timeline")
    for step in timeline.steps:
        time = step.as_json()["time"].replace("T", " ").removesuffix("Z")
        steps.add_row(time, numbers[step.entry], step.step, describe(step, numbers))
    out.print(steps)


def describe(step: Step, numbers: dict[str, str]) -> str:
    """One line a person reads: what happened at this step (``numbers``: entry -> its # in the
    table of events)."""
    details = step.details
    if step.step == "arrived":
        return _arrival(details)
    if step.step == ATTEMPT:
        return _attempt(details)
    if step.step == WAIT:
        error = f" ({details['error']})" if details.get("error") else ""
        why = WAITS.get(str(details.get("why")), str(details.get("why")))
        return f"{why}{error}: waits {_seconds(details.get('delay'))}"
    return _outcome(details, numbers)


def _arrival(details: dict[str, Any]) -> str:
    if details.get("valid") is False:
        return "taken from the stream: invalid, dead-lettered at once"
    comments = details.get("comments", 0)
    fields = details.get("caseDataFields", 0)
    return (
        f"taken from the stream; event time {details.get('eventTime', '?')}, "
        f"{_count(comments, 'comment')}, {_count(fields, 'caseData field')}"
    )


def _attempt(details: dict[str, Any]) -> str:
    text = f"attempt {details.get('attempt', '?')}"
    found = details.get("readBack")
    answer = _answer(details)
    if found:
        text += f": {READ_BACKS.get(found, found)}"
    if answer:
        text += f"{'; ' if found else ': '}{answer}"
    then = details.get("then")
    if then == "retry":
        text += f"; retry in {_seconds(details.get('delay'))}"
    elif then:
        text += f" -> {then}"
    return text


def _answer(details: dict[str, Any]) -> str:
    """``HTTP 503 (TransientError)``, ``OutcomeUnknown (ReadTimeout)``, ``HTTP 201``."""
    status, code = details.get("httpStatus"), details.get("code")
    said = " ".join(part for part in (status and f"HTTP {status}", code) if part)
    error, cause = details.get("error"), details.get("cause")
    if not error:
        return said
    if said:
        return f"{said} ({error})"
    return f"{error} ({cause})" if cause else str(error)


def _outcome(details: dict[str, Any], numbers: dict[str, str]) -> str:
    kind, reason, status = details.get("outcome"), details.get("reason"), details.get("httpStatus")
    text = str(kind) + (f": {reason}" if reason else "")
    winner = details.get("supersededBy")
    if isinstance(winner, dict):
        entry = str(winner.get("entry", "?"))
        which = f"#{numbers[entry]}, " if entry in numbers else ""
        text += f" by {which}entry {entry} (event time {winner.get('eventTime', '?')})"
        text += f": only its comments were sent (HTTP {status})" if status else ": nothing sent"
    elif kind == "duplicate":
        text += ": processed before, nothing sent"
    elif status:
        text += f" (HTTP {status})"
    text += f", after {_count(details.get('attempts', 0), 'attempt')}"
    if kind == "deadlettered" and reason:
        text += f"; see casesync dlq list --reason {reason}"
    return text


def _count(number: Any, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _seconds(delay: Any) -> str:
    return f"{delay:.2f} s" if isinstance(delay, (int, float)) else "?"
