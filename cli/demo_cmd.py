"""``casesync demo``: the main job on embedded defaults, from nothing to a table of outcomes.

Starts an embedded Redis-compatible server unless ``CASESYNC_REDIS_URL`` is set and the Thalamus
simulator unless ``CASESYNC_THALAMUS_URL`` is set, runs one worker, publishes the sample events,
shows progress, prints the outcomes, and stops everything it started (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from rich.progress import Progress
from rich.table import Table

from cli.output import Console
from cli.publish_cmd import publish
from core.events import identity
from ops import processes
from settings import load_settings

#: The sample events: beside the source in a checkout, or in the working folder of an installed
#: copy (the Docker image keeps the repository in /app).
SAMPLE_EVENTS = next(
    (
        path
        for path in (
            Path(__file__).resolve().parent.parent / "examples" / "events.jsonl",
            Path("examples") / "events.jsonl",
        )
        if path.is_file()
    ),
    Path("examples") / "events.jsonl",
)
WAVE_TIMEOUT = 90.0

#: With the simulator, the demo makes two cases fail on purpose: one recovers, one never does.
RECOVERING_CASE = 107
FAILING_CASE = 108

#: Quick retries, so a demo run takes seconds, not minutes.
DEMO_WORKER_SETTINGS = {
    "CASESYNC_MAX_ATTEMPTS": "4",
    "CASESYNC_RETRY_BASE_DELAY": "0.2",
    "CASESYNC_RETRY_MAX_DELAY": "2",
    "CASESYNC_CONCURRENCY": "8",
    "CASESYNC_LOG_LEVEL": "WARNING",
}


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo", help="run the main job on embedded defaults and show every outcome"
    )
    parser.add_argument(
        "--events", type=Path, default=SAMPLE_EVENTS, help="JSON-lines events to publish"
    )
    parser.set_defaults(run=run)


@dataclass(frozen=True)
class Seen:
    type: str
    request_id: str
    case_id: str
    reason: str
    attempts: str


def run(args: argparse.Namespace) -> int:
    console = Console()
    try:
        text = args.events.read_text(encoding="utf-8")
    except OSError as exc:
        console.print(f"casesync demo: cannot read the events: {exc}")
        return 2
    lines = [line.strip() for line in text.splitlines()]
    lines = _unique_per_run([line for line in lines if line])
    with contextlib.ExitStack() as stack:
        env = _environment(stack, console)
        settings = load_settings(**{k.removeprefix("CASESYNC_").lower(): v for k, v in env.items()})
        log_path = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "worker.log"
        log = stack.enter_context(log_path.open("wb"))
        worker = processes.start_process(processes.worker_command(), env, log)
        stack.callback(processes.stop_process, worker)
        client = redis.Redis.from_url(settings.redis_url, decode_responses=True, socket_timeout=10)
        stack.callback(client.close)
        seen = _run_waves(console, client, settings.events_stream, settings.results_stream, lines)
        _print_outcomes(console, seen)
        if len(seen) < len(lines):
            console.print(f"[red]only {len(seen)} of {len(lines)} events ended; worker log:[/red]")
            console.print(log_path.read_text(encoding="utf-8", errors="replace")[-4000:])
            return 1
        return 0
    return 1  # pragma: no cover - ExitStack swallows nothing; keeps mypy's flow analysis happy


def _environment(stack: contextlib.ExitStack[Any], console: Console) -> dict[str, str]:
    """The worker's settings: the user's where set, else embedded servers started here."""
    env = dict(DEMO_WORKER_SETTINGS)
    if not os.environ.get("CASESYNC_REDIS_URL"):
        env["CASESYNC_REDIS_URL"] = stack.enter_context(processes.embedded_redis())
        console.print(f"embedded Redis-compatible server at {env['CASESYNC_REDIS_URL']}")
    if not os.environ.get("CASESYNC_THALAMUS_URL"):
        env.update(_start_simulator(stack))
        console.print(f"Thalamus simulator at {env['CASESYNC_THALAMUS_URL']}")
    return env


def _start_simulator(stack: contextlib.ExitStack[Any]) -> dict[str, str]:
    from thalamus.simulator.config import DEFAULT_TOKEN, DEFAULT_TOUCHPOINT
    from thalamus.simulator.process import running_simulator

    simulator = stack.enter_context(running_simulator())
    simulator.admin.script(RECOVERING_CASE, [{"status": 503}, _too_many_requests(1)])
    simulator.admin.script(FAILING_CASE, [{"status": 503}] * 20)
    return {
        "CASESYNC_THALAMUS_URL": simulator.url,
        "CASESYNC_THALAMUS_TOUCHPOINT": DEFAULT_TOUCHPOINT,
        "CASESYNC_THALAMUS_TOKEN": DEFAULT_TOKEN,
    }


def _too_many_requests(seconds: int) -> dict[str, Any]:
    return {"status": 429, "headers": {"Retry-After": str(seconds)}}


def _unique_per_run(lines: list[str]) -> list[str]:
    """Give each event id a suffix for this run, so a second run against the same Redis shows
    the same outcomes instead of duplicates; lines that share an id keep sharing it."""
    run_tag = RUN_TAG
    unique = []
    for line in lines:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            unique.append(line)
            continue
        if isinstance(event, dict) and isinstance(event.get("id"), str):
            event["id"] = f"{event['id']}-{run_tag}"
            line = json.dumps(event)
        unique.append(line)
    return unique


#: Marks this run's event ids (see :func:`_unique_per_run`); left out of the table.
RUN_TAG = uuid.uuid4().hex[:8]


def _waves(lines: list[str]) -> Iterator[list[str]]:
    """Runs of lines with no case twice, so events of one case arrive in the file's order."""
    wave: list[str] = []
    cases: set[int] = set()
    for line in lines:
        case = identity(line).get("caseInstanceId")
        if case is not None and case in cases:
            yield wave
            wave, cases = [], set()
        wave.append(line)
        if case is not None:
            cases.add(case)
    if wave:
        yield wave


def _run_waves(
    console: Console, client: redis.Redis, events: str, results: str, lines: list[str]
) -> list[Seen]:
    seen: list[Seen] = []
    last = _last_id(client, results)
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("applying events", total=len(lines))
        for wave in _waves(lines):
            publish(client, events, wave)
            deadline = time.monotonic() + WAVE_TIMEOUT
            wanted = len(seen) + len(wave)
            while len(seen) < wanted and time.monotonic() < deadline:
                reply: Any = client.xread({results: last}, count=100, block=500)
                for entry_id, fields in reply[0][1] if reply else []:
                    last = entry_id
                    seen.append(_seen(fields["event"]))
                    progress.advance(bar)
            if len(seen) < wanted:
                break
    return seen


def _last_id(client: redis.Redis, stream: str) -> str:
    newest: Any = client.xrevrange(stream, count=1)
    return str(newest[0][0]) if newest else "0"


def _seen(payload: str) -> Seen:
    event = json.loads(payload)
    data = event.get("data", {})
    return Seen(
        type=event["type"].removeprefix("casesync.update."),
        request_id=str(data.get("requestId") or "-").removesuffix(f"-{RUN_TAG}"),
        case_id=str(data.get("caseInstanceId") or "-"),
        reason=str(data.get("reason") or ""),
        attempts=str(data.get("attempts", "")),
    )


def _print_outcomes(console: Console, seen: list[Seen]) -> None:
    table = Table(title="Outcomes, in the order they were published to casesync:results")
    for column in ("outcome", "reason", "case", "attempts", "event id"):
        table.add_column(column)
    for item in seen:
        table.add_row(item.type, item.reason, item.case_id, item.attempts, item.request_id)
    console.print(table)
    summary = Table(title="Totals")
    summary.add_column("outcome")
    summary.add_column("events", justify="right")
    for kind, count in sorted(Counter(item.type for item in seen).items()):
        summary.add_row(kind, str(count))
    console.print(summary)
