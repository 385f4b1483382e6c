"""The ``casesync`` command: one sub-command per module of this package."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import redis

from cli import (
    bench_cmd,
    config_cmd,
    demo_cmd,
    dlq_cmd,
    publish_cmd,
    simulator_cmd,
    status_cmd,
    trace_cmd,
    worker_cmd,
)
from settings import SettingsError

COMMANDS = (
    config_cmd,
    worker_cmd,
    publish_cmd,
    status_cmd,
    trace_cmd,
    dlq_cmd,
    demo_cmd,
    simulator_cmd,
    bench_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="casesync",
        description="Keeps Thalamus cases in step with the case-change events on a Redis stream.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # A command cut off by its reader mid-way (``casesync dlq list | head -1``) exits 0: the
    # reader took what it wanted. One that had finished keeps its own code.
    code = 0
    try:
        try:
            code = _parse_and_run(argv)
        except SystemExit as stop:  # argparse, after --help or a usage error
            code = int(stop.code or 0)
            raise
        finally:
            # Flushed here, not at exit, so that a reader gone is noticed where it is handled.
            sys.stdout.flush()
    except BrokenPipeError:
        # The Python docs' recipe (signal module, "Note on SIGPIPE"): stdout goes to devnull so
        # that the flush at exit, with output still buffered, cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return code


def _parse_and_run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        code: int = args.run(args)
    except SettingsError as exc:
        print(f"casesync: {exc}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        # One line, not a traceback: an operator (or a health check) needs only the cause.
        # redis-py's messages name the host and port, never the password of the URL.
        print(f"casesync {args.command}: Redis: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
