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


def test_a_short_recovery_run_accounts_for_every_event(tmp_path: Path) -> None:
    report = tmp_path / "recovery.json"
    argv = ["bench", "--recovery", "--recovery-events", "100", "--recovery-bound", "5"]
    assert main([*argv, "--json", str(report)]) == 0
    document = json.loads(report.read_text(encoding="utf-8"))
    [row] = document["measurements"]
    assert row["name"] == "pipeline threads recovery"
    [target] = document["targets"]
    assert target["name"].startswith("after kill -9 mid-load")
    # Whatever the verdict on this design: each event is counted with an outcome or missing.
    missing = int(target["detail"].split("missing ")[1].split(",")[0])
    assert row["events"] + missing == 100
    assert target["measured"] <= 5.0 + 1.0
