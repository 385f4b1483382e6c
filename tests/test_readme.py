"""The README's configuration table is the one the settings class generates, and its command
table names every command with an example that parses."""

from __future__ import annotations

import argparse
import re
import shlex

import pytest

from cli.main import build_parser
from settings import ENV_PREFIX, Settings
from settings.docs import END, README, START, configuration_table, with_table


def test_the_readme_configuration_table_matches_the_settings() -> None:
    readme = README.read_text(encoding="utf-8")
    assert with_table(readme, configuration_table()) == readme, (
        "README.md's configuration table is out of date; "
        "regenerate it with: .venv/bin/python -m settings.docs --write"
    )


def test_every_setting_has_a_row_with_a_meaning() -> None:
    table = configuration_table()
    for name, field in Settings.model_fields.items():
        assert f"| `{ENV_PREFIX}{name.upper()}` |" in table
        assert field.description, f"{name} has no description for the README"


def test_defaults_are_written_as_an_operator_would_set_them() -> None:
    rows = {row.split(" | ")[0]: row.split(" | ")[1] for row in configuration_table().splitlines()}
    assert rows["| `CASESYNC_REDIS_URL`"] == "`redis://localhost:6379/0`"
    assert rows["| `CASESYNC_THALAMUS_URL`"] == "none"
    assert rows["| `CASESYNC_LOG_JSON`"] == "`false`"
    assert rows["| `CASESYNC_VISIBILITY_TIMEOUT`"] == "`60`"
    assert rows["| `CASESYNC_RETRY_BASE_DELAY`"] == "`1`"


def test_regenerating_replaces_only_the_text_between_the_markers() -> None:
    readme = f"# Title\n\nbefore\n{START}\nold table\n{END}\nafter\n"
    assert with_table(readme, "| new |\n") == f"# Title\n\nbefore\n{START}\n| new |\n{END}\nafter\n"


def test_a_readme_without_the_markers_is_refused() -> None:
    with pytest.raises(ValueError, match="settings-table"):
        with_table("# no markers\n", "| table |\n")


def _command_rows() -> list[tuple[str, str]]:
    """(command, example) of each row of the README's command table."""
    readme = README.read_text(encoding="utf-8")
    table = readme.split("| Command | What it does | Example |\n", 1)[1].split("\n\n", 1)[0]
    rows = []
    for line in table.splitlines()[1:]:
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        rows.append((cells[0].strip("`"), cells[-1].strip("`")))
    return rows


def _subcommand_names() -> set[str]:
    """Every ``casesync`` command, with ``dlq``'s actions spelled out (``dlq list``, ...)."""
    names = set()
    for action in build_parser()._subparsers._group_actions:
        for name, sub in action.choices.items():
            nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
            names |= {f"{name} {c}" for a in nested for c in a.choices} if nested else {name}
    return names


def test_every_command_has_a_row_with_an_example_in_the_readme() -> None:
    rows = _command_rows()
    # The command's own words: "dlq list" of "casesync dlq list [--reason R]".
    named = {
        " ".join(word for word in command.split()[1:3] if word.isalpha() and word.islower())
        for command, _ in rows
        if command.startswith("casesync ")
    }
    assert named == _subcommand_names()
    assert all(example for _, example in rows)


def test_every_example_in_the_readme_command_table_is_a_valid_command_line() -> None:
    for command, example in _command_rows():
        words = shlex.split(example)
        assert words[0] == command.split()[0], f"{example!r} is not an example of {command!r}"
        if words[0] != "casesync":
            continue
        args, extra = build_parser().parse_known_args(words[1:])
        assert not extra or getattr(args, "accepts_extra", False), example
