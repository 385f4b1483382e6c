"""``casesync simulator``: the Thalamus API simulator for development and tests."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from thalamus.simulator.options import add_arguments, config_from_args


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "simulator", help="run the Thalamus API simulator"
    )
    add_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from thalamus.simulator.server import serve

    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"casesync simulator: {exc}", file=sys.stderr)
        return 2
    serve(
        host=args.host,
        port=args.port,
        config=config,
        port_file=args.port_file,
        log_level=args.log_level,
    )
    return 0
