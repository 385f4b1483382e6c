"""The benchmark runs end to end on a few events and reports every column (no timing asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.report import COLUMNS
from cli.main import main

pytestmark = pytest.mark.slow


def test_a_quick_benchmark_reports_every_measured_column(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--events", "50", "--json", str(report)]) == 0
    document = json.loads(report.read_text(encoding="utf-8"))
    rows = {row["side"]: row for row in document["measurements"]}
    assert set(rows) == {"bare httpx", "plain consumer", "pipeline"}
    for side, row in rows.items():
        assert row["events"] == 50
        assert row["not_applied"] == 0
        for _, key in COLUMNS:
            if side == "bare httpx" and key.startswith("redis_"):
                assert row[key] is None, "the bare loop uses no Redis"
            else:
                assert row[key] > 0, f"{side}: {key} = {row[key]}"
    verdicts = {target["verdict"] for target in document["targets"]}
    assert verdicts <= {"PASS", "MISS", "not measured"}
