"""The soak's pieces, fast: its duration flag, its plan of restarts and windows, its books (an
event lost, one doubled, a comment posted twice), its report; and one tiny real run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.soak import SoakOptions, SoakResult
from bench.soak_fleet import Incarnation
from bench.soak_ledger import SoakLedger
from bench.soak_plan import SoakPlan, parse_duration, restart_plan, windows
from bench.soak_report import document, lines
from bench.workload import event_json
from cli.main import main

APPLIED = "casesync.update.applied"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800), ("90s", 90), ("1h30m", 5400), ("45", 45), ("2.5m", 150), (" 1H ", 3600)],
)
def test_a_duration_is_read_as_people_write_it(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "abc", "0", "0s", "5x", "-5m", "30m10", "1.2.3m"])
def test_a_malformed_duration_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize("option", ["--soak-rate", "--soak-latency"])
@pytest.mark.parametrize("value", ["-5", "nan", "fast"])
def test_a_negative_or_unreadable_rate_or_latency_is_refused_with_its_name(
    option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["bench", "--soak", "1m", option, value])
    assert stopped.value.code == 2
    assert f"argument {option}: " in capsys.readouterr().err


def test_half_an_hour_restarts_a_worker_every_five_minutes_each_both_ways() -> None:
    plan = restart_plan(1800, 300, workers=2)
    assert [(r.at, r.worker, r.signal_name) for r in plan] == [
        (300, 0, "SIGTERM"),
        (600, 1, "SIGTERM"),
        (900, 0, "SIGKILL"),
        (1200, 1, "SIGKILL"),
        (1500, 0, "SIGTERM"),
    ]


def test_each_window_after_the_first_starts_with_its_restart() -> None:
    plan = SoakPlan(1800, 300)
    found = plan.windows
    assert [(w.start, w.end) for w in found] == [(n * 300, (n + 1) * 300) for n in range(6)]
    assert found[0].restart is None
    assert [w.restart for w in found[1:]] == plan.restarts


def test_a_run_that_is_not_a_multiple_of_the_interval_ends_with_a_short_window() -> None:
    found = windows(1000, 300, restart_plan(1000, 300, 2))
    assert [(w.start, w.end) for w in found][-1] == (900, 1000)
    assert found[-1].restart is not None
    assert found[-1].restart.signum is signal.SIGKILL


def _outcome(request_id: str, kind: str = APPLIED, reason: str | None = None) -> dict[str, object]:
    return {"type": kind, "data": {"requestId": request_id, "reason": reason}}


def _ledger_of_three() -> tuple[SoakLedger, list[str]]:
    """Events 0, 1, 2 of cases 1, 2, 3, published at Redis times 1000, 2000, 3000 ms."""
    ledger = SoakLedger()
    events = [event_json("t", number, number + 1) for number in range(3)]
    for number, event in enumerate(events):
        ledger.publish(f"{(number + 1) * 1000}-0", event)
    return ledger, [json.loads(event)["id"] for event in events]


def test_the_books_find_an_event_doubled_and_one_without_an_outcome() -> None:
    ledger, ids = _ledger_of_three()
    ledger.add_outcomes(
        [
            ("1500-0", _outcome(ids[0])),
            ("2100-0", _outcome(ids[1])),
            ("2200-0", _outcome(ids[0])),  # a second outcome of event 0
            ("2300-0", _outcome("not-ours")),
        ]
    )
    on_case = {1: ["benchmark event 0"], 2: ["benchmark event 1"], 3: []}
    books = ledger.reconcile(on_case)
    assert (books.events_in, books.outcomes_out, books.outcome_entries) == (3, 2, 3)
    assert (books.missing, books.doubled, books.unexpected) == (1, 1, 1)
    assert books.by_type == {"applied": 2}
    assert not books.ok
    assert ledger.last_id == "2300-0", "the next read goes on after the last entry taken in"


def test_the_books_find_a_comment_posted_twice_and_one_never_posted() -> None:
    ledger, ids = _ledger_of_three()
    ledger.add_outcomes(
        [
            ("1100-0", _outcome(ids[0])),
            ("2100-0", _outcome(ids[1], "casesync.update.superseded")),
            ("3100-0", _outcome(ids[2], "casesync.update.deadlettered", "retriesExhausted")),
        ]
    )
    on_case = {1: ["benchmark event 0", "benchmark event 0"], 2: ["seeded comment"], 3: []}
    books = ledger.reconcile(on_case)
    assert (books.comments.posted_twice, books.comments.missing) == (1, 1)
    assert books.dead_letter_reasons == {"retriesExhausted": 1}
    assert books.missing == books.doubled == 0
    assert not books.ok


def test_clean_books_hold() -> None:
    ledger, ids = _ledger_of_three()
    ledger.add_outcomes([(f"{n + 4}000-0", _outcome(ids[n])) for n in range(3)])
    books = ledger.reconcile({n + 1: [f"benchmark event {n}"] for n in range(3)})
    assert books.ok
    assert books.events_in == books.outcomes_out == 3


def test_latencies_are_reported_by_the_window_the_event_was_published_in() -> None:
    ledger, ids = _ledger_of_three()
    ledger.add_outcomes([("1100-0", _outcome(ids[0])), ("2400-0", _outcome(ids[1]))])
    first, second, third = ledger.latencies_by_window(1000, every_s=1.0, count=3)
    assert (first.events, first.p50_ms, first.p99_ms) == (1, 100, 100)
    assert (second.events, second.p99_ms) == (1, 400)
    assert third.events == 0, "event 2 has no outcome yet"


def _result(tmp_path: Path) -> SoakResult:
    ledger, ids = _ledger_of_three()
    ledger.add_outcomes([("1100-0", _outcome(ids[0])), ("1200-0", _outcome(ids[0]))])
    options = SoakOptions(duration=3.0, every=1.5, logs=tmp_path)
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait(timeout=30)
    worker = Incarnation(0, 0, process, -2.0, rss_warm_kb=90_000, rss_last_kb=95_000)
    worker.stopped_by, worker.stop_seconds, worker.exit_code = "SIGKILL at 1.5 s", 0.2, -9
    return SoakResult(
        options=options,
        capacity=600.0,
        rate=300.0,
        published_seconds=3.0,
        drain_seconds=1.0,
        drained=False,
        reconciliation=ledger.reconcile({}),
        windows=ledger.latencies_by_window(1000, 1.5, 2),
        workers=[worker],
        redis={"after_warmup": {"used_memory_mb": 2.0}, "at_end": {"used_memory_mb": 9.5}},
        restarts=options.plan.restarts,
    )


def test_the_report_says_what_went_wrong_and_the_json_is_strict(tmp_path: Path) -> None:
    result = _result(tmp_path)
    text = "\n".join(lines(result))
    assert "half of 600 events/s" in text
    assert "events in 3, outcomes out 1 (2 outcome entries): missing 2, doubled 1" in text
    assert "1.5 s SIGTERM worker 0" in text
    assert "SIGKILL at 1.5 s (exited after 0.2 s, code -9)" in text
    assert "87.9 MB" in text
    assert "92.8 MB" in text
    assert "9.5 MB at the end" in text
    assert text.endswith("RESULT: FAIL (events lost, doubled, or comments posted twice/missing)")
    written = json.dumps(document(result), allow_nan=False)  # a window without events: null
    assert json.loads(written)["books"]["doubled"] == 1


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_tiny_soak_with_a_restart_accounts_for_every_event(tmp_path: Path) -> None:
    report = tmp_path / "soak.json"
    argv = ["bench", "--soak", "4s", "--soak-rate", "50", "--soak-restart-every", "2s"]
    assert main([*argv, "--json", str(report), "--logs", str(tmp_path / "logs")]) == 0
    found = json.loads(report.read_text(encoding="utf-8"))
    books = found["books"]
    assert books["events_in"] == books["outcomes_out"] == 200
    assert books["doubled"] == books["comments"]["posted_twice"] == 0
    assert [r["signal"] for r in found["restarts"]] == ["SIGTERM"]
    assert [w["worker"] for w in found["workers"]] == [0, 1, 0]
