"""How operator commands print: tables for people, JSON for scripts.

Stream contents are data, never markup: the console shows ``[red]`` or ``:smile:`` in an event
as written, and nothing in an event can style or rewrite the terminal.
"""

from __future__ import annotations

import errno
import json
import sys
from typing import Any

import rich.console


class Console(rich.console.Console):
    """A rich console that leaves a closed output (``casesync ... | head``) to ``cli.main``,
    as ``print`` does, so every command ends the same way: rich alone would exit 1 there."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")


def console() -> Console:
    """A console on the current standard output that prints text as it is."""
    return Console(file=sys.stdout, markup=False, highlight=False, emoji=False)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def shorten(text: str, width: int) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
