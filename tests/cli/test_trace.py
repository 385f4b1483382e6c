"""``casesync trace`` on a real Redis-compatible server, its trace written as workers write it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from typing import Any

import pytest
import redis

from cli.main import main
from core import outcomes, trace
from core.events import parse_event
from core.guards import order_key
from core.outcomes import Outcome
from tests.conftest import EVENTS, case_event

NOW = 1_795_861_200.0  # 2026-11-28T10:20:00Z
CASE = 12345
SOURCE = "urn:example:billing"


def _seed(db: redis.Redis) -> str:
    """Two events of CASE: e1 retried once then applied, e0 (older) superseded by it; the
    entry id of e1."""
    raws = [
        case_event("e1", CASE, source=SOURCE, time="2026-11-28T10:16:00Z"),
        case_event("e0", CASE, source=SOURCE, time="2026-11-28T10:15:00Z"),
    ]
    new, old = (str(db.xadd(EVENTS, {"event": json.dumps(raw)})) for raw in raws)
    e1, e0 = (parse_event(json.dumps(raw), now=NOW) for raw in raws)
    s1, s0 = trace.Subject(CASE, new, SOURCE, "e1"), trace.Subject(CASE, old, SOURCE, "e0")
    records = [
        trace.arrived(new, e1, NOW),
        trace.arrived(old, e0, NOW),
        trace.rescheduled(
            s1,
            NOW + 0.2,
            why="retry",
            delay=0.4,
            tried=trace.Attempt(1, NOW + 0.1, http_status=503, error="TransientError"),
        ),
        trace.outcome(
            s0,
            NOW + 0.3,
            Outcome(outcomes.SUPERSEDED, "e0", SOURCE, CASE, 1),
            superseded_by=order_key(e1.time, new),
        ),
        trace.outcome(
            s1,
            NOW + 0.7,
            Outcome(outcomes.APPLIED, "e1", SOURCE, CASE, 2, http_status=201),
            tried=trace.Attempt(2, NOW + 0.6, http_status=201),
        ),
    ]
    pipe = db.pipeline(transaction=True)
    trace.add(pipe, trace.DEFAULT_BOUNDS, records)
    pipe.execute()
    return new


def _json(capsys: pytest.CaptureFixture[str], *options: str) -> tuple[int, dict[str, Any]]:
    code = main(["trace", "--json", *options])
    return code, json.loads(capsys.readouterr().out)


def test_trace_of_a_case_as_json(db: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    new = _seed(db)

    code, shown = _json(capsys, "--case", str(CASE))

    assert code == 0
    assert shown["case"] == CASE
    assert [(e["id"], e["outcome"], e["attempts"]) for e in shown["events"]] == [
        ("e1", "applied", 2),
        ("e0", "superseded", 1),
    ]
    assert [(s["id"], s["step"]) for s in shown["timeline"]] == [
        ("e1", "arrived"),
        ("e0", "arrived"),
        ("e1", "attempt"),
        ("e0", "outcome"),
        ("e1", "attempt"),
        ("e1", "outcome"),
    ]
    assert shown["timeline"][3]["supersededBy"]["entry"] == new


def test_trace_of_a_case_as_a_table_for_people(
    db: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    new = _seed(db)

    assert main(["trace", "--case", str(CASE)]) == 0

    out = capsys.readouterr().out
    assert "Events of case 12345" in out
    assert "attempt 1: HTTP 503 (TransientError); retry in 0.40 s" in out
    assert "attempt 2: HTTP 201 -> applied" in out
    assert "applied (HTTP 201), after 2 attempts" in out
    assert (
        f"superseded by #1, entry {new} (event time 2026-11-28T10:16:00Z): nothing sent, "
        "after 1 attempt"
    ) in out
    assert "2026-11-28 10:20:00.100" in out


def test_trace_of_one_event_by_source_and_id_or_by_entry(
    db: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    new = _seed(db)

    code, by_event = _json(capsys, "--event", SOURCE, "e0")
    assert code == 0
    assert {step["id"] for step in by_event["timeline"]} == {"e0"}

    code, by_entry = _json(capsys, "--entry", new)
    assert code == 0
    assert {step["entry"] for step in by_entry["timeline"]} == {new}
    assert [step["step"] for step in by_entry["timeline"]] == [
        "arrived",
        "attempt",
        "attempt",
        "outcome",
    ]


@pytest.mark.parametrize(
    "which",
    [["--case", "999"], ["--event", SOURCE, "nope"], ["--entry", "1-1"]],
    ids=["case", "event", "entry"],
)
def test_nothing_found_exits_1_with_one_line(
    db: redis.Redis, capsys: pytest.CaptureFixture[str], which: list[str]
) -> None:
    _seed(db)

    assert main(["trace", *which]) == 1

    [line] = capsys.readouterr().out.splitlines()
    assert line.startswith("no trace of ")
    assert "CASESYNC_TRACE_TTL" in line


def test_nothing_found_with_tracing_off_says_so(
    db: redis.Redis, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CASESYNC_TRACE_LENGTH", "0")

    assert main(["trace", "--case", "1"]) == 1

    assert "tracing is off (CASESYNC_TRACE_LENGTH=0)" in capsys.readouterr().out


def test_trace_with_redis_unreachable_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("CASESYNC_REDIS_URL", f"redis://127.0.0.1:{port}/0")
    monkeypatch.setenv("CASESYNC_REDIS_TIMEOUT", "2")

    assert main(["trace", "--case", "1"]) == 2

    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("casesync trace: Redis:")


def test_the_casesync_command_imports_no_metrics_before_a_worker_chooses_their_mode() -> None:
    # prometheus-client picks its multiprocess mode when first imported; `casesync worker` sets
    # it after cli.main (and every command module, this one's reader included) is imported.
    probe = "import sys, cli.main; print('prometheus_client' in sys.modules)"
    found = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert found.stdout.strip() == "False"
