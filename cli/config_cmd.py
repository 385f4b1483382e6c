"""``casesync config``: the effective settings, secrets masked."""

from __future__ import annotations

import argparse
import json
from typing import Any

from settings import load_settings


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "config", help="print the effective settings (secrets masked)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object for scripts")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    shown = load_settings().masked()
    if args.json:
        print(json.dumps(shown, indent=2))
        return 0
    width = max(len(name) for name in shown)
    for name, value in shown.items():
        print(f"{name:<{width}}  {'' if value is None else value}")
    return 0
