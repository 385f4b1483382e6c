"""``casesync publish FILE|-``: add events (JSON lines) to the events stream, for scripts."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

import redis

from core.events import EVENT_FIELD
from settings import load_settings

BATCH = 500


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "publish", help="add events from a JSON-lines file (- for standard input)"
    )
    parser.add_argument("file", help="JSON lines, one event a line; - for standard input")
    parser.set_defaults(run=run)


def event_lines(stream: TextIO) -> Iterator[str]:
    """Each non-blank line, as is: the pipeline, not the publisher, judges an event."""
    for line in stream:
        if line.strip():
            yield line.strip()


def publish(client: redis.Redis, stream: str, events: Iterable[str]) -> list[str]:
    """Add each event to the stream in order, in pipelined batches; the entry ids."""
    ids: list[str] = []
    pipe = client.pipeline(transaction=False)
    for count, event in enumerate(events, start=1):
        pipe.xadd(stream, {EVENT_FIELD: event})
        if count % BATCH == 0:
            ids += [str(entry_id) for entry_id in pipe.execute()]
    ids += [str(entry_id) for entry_id in pipe.execute()]
    return ids


def run(args: argparse.Namespace) -> int:
    from tasks.runtime import redis_client

    settings = load_settings()
    client = redis_client(settings)
    try:
        if args.file == "-":
            ids = publish(client, settings.events_stream, event_lines(sys.stdin))
        else:
            with open(args.file, encoding="utf-8") as handle:
                ids = publish(client, settings.events_stream, event_lines(handle))
    except OSError as exc:
        print(f"casesync publish: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(f"published {len(ids)} events to {settings.events_stream}")
    return 0
