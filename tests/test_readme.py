"""The README's configuration table is the one the settings class generates."""

from __future__ import annotations

import pytest

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
