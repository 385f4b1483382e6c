"""``python -m thalamus.simulator``: the same server and flags as ``casesync simulator``."""

from __future__ import annotations

import argparse
import sys

from thalamus.simulator.options import add_arguments, config_from_args
from thalamus.simulator.server import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m thalamus.simulator", description="The Thalamus API simulator."
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        serve(args.host, args.port, config, port_file=args.port_file, log_level=args.log_level)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
