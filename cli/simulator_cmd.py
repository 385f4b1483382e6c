"""``casesync simulator``: the Thalamus API simulator for development and tests."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "simulator", help="run the Thalamus API simulator"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8085, help="port to listen on")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from thalamus.simulator.server import serve

    serve(host=args.host, port=args.port)
    return 0
