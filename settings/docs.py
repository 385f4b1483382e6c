"""The README's configuration table, generated from the fields of :class:`settings.Settings`.

``python -m settings.docs`` prints the table; ``python -m settings.docs --write`` replaces the
one in README.md between the markers below. ``tests/test_readme.py`` fails while they differ.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic.fields import FieldInfo

from settings import ENV_PREFIX, Settings

START = "<!-- settings-table:start -->"
END = "<!-- settings-table:end -->"
README = Path(__file__).resolve().parent.parent / "README.md"


def configuration_table() -> str:
    """One Markdown row per setting: variable, default, meaning."""
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        meaning = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{ENV_PREFIX}{name.upper()}` | {default_text(field)} | {meaning} |")
    return "\n".join(rows) + "\n"


def default_text(field: FieldInfo) -> str:
    """The default as an operator would write it in the environment."""
    value = field.default
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def with_table(readme: str, table: str) -> str:
    """The README text with the text between the markers replaced by ``table``."""
    head, start, rest = readme.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise ValueError(f"README.md lacks the markers {START} and {END}")
    return f"{head}{START}\n{table}{END}{tail}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m settings.docs", description=__doc__)
    parser.add_argument("--write", action="store_true", help="update README.md in place")
    args = parser.parse_args(argv)
    table = configuration_table()
    if not args.write:
        sys.stdout.write(table)
        return 0
    README.write_text(with_table(README.read_text(encoding="utf-8"), table), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
