"""The simulator's command-line flags, shared by ``casesync simulator`` and
``python -m thalamus.simulator`` so the two never drift apart."""

from __future__ import annotations

import argparse
from pathlib import Path

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from thalamus.simulator.config import (
    DEFAULT_PASSWORD,
    DEFAULT_PRINCIPAL,
    DEFAULT_TOKEN,
    DEFAULT_TOUCHPOINT,
    SimulatorConfig,
)
from thalamus.simulator.faults import ERROR_STATUSES, FaultSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every simulator flag to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8085, help="port to listen on; 0 = any free")
    parser.add_argument("--port-file", type=Path, help="write the bound port to this file")
    parser.add_argument("--catalogue", type=Path, help="catalogue JSON (default: built-in)")
    parser.add_argument("--seed", type=int, help="seed of the random faults, for repeatable runs")
    parser.add_argument("--record-size", type=int, default=10_000, help="requests kept in record")
    parser.add_argument("--log-level", default="warning", help="uvicorn log level")
    _add_fault_arguments(parser.add_argument_group("faults (also at run time: POST /_sim/faults)"))
    _add_auth_arguments(parser.add_argument_group("credentials"))


def _add_fault_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--latency-ms", type=float, default=0.0, help="added to every answer")
    group.add_argument("--jitter-ms", type=float, default=0.0, help="plus uniform 0..N ms")
    for status in ERROR_STATUSES:
        group.add_argument(
            f"--error-rate-{status}", type=float, default=0.0, help=f"probability of a {status}"
        )
    group.add_argument("--rate-429", type=float, default=0.0, help="probability of a 429")
    group.add_argument("--retry-after", type=int, default=1, help="Retry-After seconds of a 429")
    group.add_argument(
        "--drop-rate", type=float, default=0.0, help="probability of closing without an answer"
    )
    group.add_argument(
        "--apply-then-drop-rate",
        type=float,
        default=0.0,
        help="probability of applying the update, then closing without an answer",
    )


def _add_auth_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--touchpoint", default=DEFAULT_TOUCHPOINT, help="expected code; '' turns checks off"
    )
    group.add_argument("--token", default=DEFAULT_TOKEN, help="expected touchpoint token")
    group.add_argument(
        "--require-login", action="store_true", help="case calls need a login session"
    )
    group.add_argument("--principal", default=DEFAULT_PRINCIPAL, help="login principal")
    group.add_argument("--password", default=DEFAULT_PASSWORD, help="login password")
    group.add_argument("--session-ttl", type=float, default=1800.0, help="session lifetime, s")


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """The start-up configuration the flags describe; raises ValueError for bad fault rates."""
    fault_names = [name for name in FaultSettings.model_fields if hasattr(args, name)]
    try:
        faults = FaultSettings.model_validate({name: getattr(args, name) for name in fault_names})
    except ValidationError as exc:
        problems = "; ".join(_problem(error) for error in exc.errors())
        raise ValueError(f"bad fault flags: {problems}") from None
    return SimulatorConfig(
        catalogue=args.catalogue,
        faults=faults,
        seed=args.seed,
        touchpoint=args.touchpoint or None,
        token=args.token or None,
        require_login=args.require_login,
        principal=args.principal,
        password=args.password,
        session_ttl=args.session_ttl,
        record_size=args.record_size,
    )


def _problem(error: ErrorDetails) -> str:
    flag = "--" + "-".join(str(part) for part in error["loc"]).replace("_", "-")
    message = str(error["msg"]).removeprefix("Value error, ")
    return message if flag == "--" else f"{flag}: {message}"
