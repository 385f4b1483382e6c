"""``casesync trace`` over what real workers recorded: the timeline a support engineer reads."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cli.main import main
from ops import processes
from tests.conftest import case_event
from tests.e2e.conftest import Pipeline

CASE = 31


def test_the_trace_of_a_case_shows_a_retry_a_superseded_change_and_a_dead_letter(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    first = pipeline.start_worker()
    pipeline.simulator.admin.script(CASE, [{"status": 503}], method="PUT")
    newer = case_event(
        "newer",
        CASE,
        time="2026-11-28T10:16:00Z",
        status="Resolved",
        comments=[{"description": "n"}],
    )
    [newer_entry] = pipeline.publish(newer)
    pipeline.wait_for_outcomes(1)
    # The trace lives in Redis: a worker started later adds to the same timeline.
    processes.stop_process(first)
    pipeline.start_worker()
    older = case_event("older", CASE, time="2026-11-28T10:15:00Z", comments=[{"description": "o"}])
    refused = case_event("refused", CASE, time="2026-11-28T10:17:00Z", status="Frozen")
    older_entry, refused_entry = pipeline.publish(older, refused)
    pipeline.wait_for_outcomes(3)
    monkeypatch.setenv("CASESYNC_REDIS_URL", pipeline.redis_url)
    monkeypatch.setenv("COLUMNS", "250")  # no cell of the table cut

    assert main(["trace", "--case", str(CASE), "--json"]) == 0

    shown: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert [
        (e["entry"], e["id"], e["outcome"], e["reason"], e["attempts"]) for e in shown["events"]
    ] == [
        (newer_entry, "newer", "applied", None, 2),
        (older_entry, "older", "superseded", None, 1),
        (refused_entry, "refused", "deadlettered", "InvalidName", 1),
    ]
    steps = {
        entry: [s for s in shown["timeline"] if s["entry"] == entry]
        for entry in (newer_entry, older_entry, refused_entry)
    }
    arrived, retried, applied, ended = steps[newer_entry]
    assert (arrived["step"], arrived["comments"], arrived["caseDataFields"]) == ("arrived", 1, 0)
    assert (retried["step"], retried["attempt"], retried["httpStatus"], retried["then"]) == (
        "attempt",
        1,
        503,
        "retry",
    )
    assert 0 <= retried["delay"] <= 0.1, "CASESYNC_RETRY_BASE_DELAY 0.1, full jitter"
    assert (applied["attempt"], applied["httpStatus"], applied["then"]) == (2, 201, "applied")
    assert (ended["step"], ended["outcome"]) == ("outcome", "applied")
    assert arrived["time"] < retried["time"] < applied["time"] <= ended["time"]
    superseded = steps[older_entry][-1]
    assert superseded["outcome"] == "superseded"
    assert superseded["supersededBy"]["entry"] == newer_entry
    assert superseded["supersededBy"]["eventTime"] == "2026-11-28T10:16:00Z"
    attempt, dead = steps[refused_entry][1:]
    assert (attempt["httpStatus"], attempt["code"], attempt["error"]) == (
        400,
        "InvalidName",
        "PermanentError",
    )
    assert (dead["outcome"], dead["reason"]) == ("deadlettered", "InvalidName")
    assert "Frozen" not in json.dumps(shown), "no value of the event is kept"
    assert '"n"' not in json.dumps(shown), "no comment"

    assert main(["trace", "--event", "urn:test", "refused"]) == 0
    table = capsys.readouterr().out
    assert "attempt 1: HTTP 400 InvalidName (PermanentError) -> deadlettered" in table
    assert "deadlettered: InvalidName (HTTP 400), after 1 attempt" in table
    assert "newer" not in table
