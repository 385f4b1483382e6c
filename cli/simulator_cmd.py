"""``casesync simulator``: the Thalamus API simulator for development and tests."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

FAULT_FLAGS = {
    "latency_ms": "fixed latency of every answer, ms",
    "jitter_ms": "random extra latency up to this many ms",
    "rate_500": "share of requests answered 500",
    "rate_502": "share of requests answered 502",
    "rate_503": "share of requests answered 503",
    "rate_504": "share of requests answered 504",
    "rate_429": "share of requests answered 429",
    "retry_after": "Retry-After seconds sent with a 429",
    "drop_rate": "share of requests whose connection is closed without an answer",
}


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "simulator", help="run the Thalamus API simulator"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8085, help="port to listen on")
    parser.add_argument("--catalogue", type=Path, help="JSON catalogue instead of the default")
    parser.add_argument("--touchpoint", default="REST01", help="touchpoint code it accepts")
    parser.add_argument("--token", default="sim-token", help="touchpoint token it accepts")
    parser.add_argument("--principal", default="operator@example.com", help="login principal")
    parser.add_argument("--password", default="sim-password", help="login password")
    parser.add_argument("--require-login", action="store_true", help="case calls need a session")
    parser.add_argument("--session-ttl", type=float, default=1800.0, help="session life, s")
    parser.add_argument("--seed", type=int, help="seed of the fault dice, for repeatable runs")
    for name, meaning in FAULT_FLAGS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=0.0, help=meaning)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from thalamus.simulator.server import Credentials, serve

    credentials = Credentials(
        touchpoint=args.touchpoint,
        token=args.token,
        principal=args.principal,
        password=args.password,
        require_login=args.require_login,
        session_ttl=args.session_ttl,
    )
    faults = {name: getattr(args, name) for name in FAULT_FLAGS}
    faults["retry_after"] = faults["retry_after"] or 1
    serve(
        args.host,
        args.port,
        catalogue=args.catalogue,
        credentials=credentials,
        faults=faults,
        seed=args.seed,
    )
    return 0
