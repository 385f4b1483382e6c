"""``casesync status`` on a real Redis-compatible server, seeded as workers leave the state."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
import redis

from cli.main import main
from core.schedule import Job, Schedule
from settings import keys
from tests.conftest import EVENTS, DeadLetterFactory, case_event

GROUP = "casesync"
QUEUE = "casesync"
#: 2027-01-15T08:00:00Z, as epoch seconds.
DUE = 1_800_000_000.0


def _status(capsys: pytest.CaptureFixture[str], *options: str) -> tuple[int, dict[str, Any]]:
    code = main(["status", "--json", *options])
    shown: dict[str, Any] = json.loads(capsys.readouterr().out)
    return code, shown


def _seed_backlog(db: redis.Redis, *, events: int, read: int, entry_ids: bool = False) -> None:
    """``events`` entries in the stream, of which worker ``w1`` read (and holds) ``read``."""
    db.xgroup_create(EVENTS, GROUP, id="0", mkstream=True)
    for n in range(events):
        # Explicit early ids make the entries old: added in the first seconds of 1970.
        db.xadd(
            EVENTS,
            {"event": json.dumps(case_event(f"e{n}", 10 + n))},
            id=f"{n + 1}-0" if entry_ids else "*",
        )
    if read:
        db.xreadgroup(GROUP, "w1", {EVENTS: ">"}, count=read)


def _seed_schedule(db: redis.Redis, *, in_flight: int, waiting: int) -> list[str]:
    """Entries as tasks leave them: ``in_flight`` leased, ``waiting`` put back for a retry, the
    n-th due at ``DUE + 60 * n`` after n attempts (listed last-due first, to be sorted)."""
    schedule = Schedule(db, lease=60)
    pipe = db.pipeline(transaction=True)
    schedule.add_leased(pipe, [Job(f"100-{n}", "{}") for n in range(in_flight)], DUE)
    for n in reversed(range(waiting)):
        retry = Job(f"200-{n}", "{}", attempts=n + 1, first_attempt_at=DUE - 600)
        schedule.add_leased(pipe, [retry], DUE)
        schedule.add_retry(pipe, retry, DUE + 60 * n)
    pipe.execute()
    return [f"200-{n}" for n in range(waiting)]


def test_status_counts_what_waits_where(
    db: redis.Redis, dead_letter: DeadLetterFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed_backlog(db, events=5, read=2)
    db.rpush(QUEUE, "t1", "t2", "t3")
    _seed_schedule(db, in_flight=4, waiting=2)
    for reason in ("retriesExhausted", "retriesExhausted", "invalidEvent"):
        dead_letter(case_event("d", 1), reason)

    code, shown = _status(capsys)

    assert code == 0
    assert shown["healthy"] is True
    assert shown["eventsLength"] == 5
    assert shown["lag"] == 3
    assert shown["pending"] == 2
    assert 0 <= shown["oldestPendingAge"] < 60
    assert shown["queueDepth"] == 3
    assert shown["inFlight"] == 4
    assert shown["scheduled"] == 2
    assert "retriesWaiting" not in shown
    # Everything not yet ended: unread, pending, in flight, waiting on the schedule.
    assert shown["backlog"] == 3 + 2 + 4 + 2
    # Each dead letter adds its ``deadlettered`` outcome to the results stream.
    assert shown["resultsLength"] == 3
    assert shown["deadLetterLength"] == 3
    assert shown["deadLettersByReason"] == {"retriesExhausted": 2, "invalidEvent": 1}
    assert shown["breakerOpen"] is None
    [worker] = shown["workers"]
    assert worker["name"] == "w1"
    assert worker["alive"] is True
    assert worker["pending"] == 2


def test_status_table_shows_the_figures_for_people(
    db: redis.Redis, dead_letter: DeadLetterFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed_backlog(db, events=4, read=1)
    dead_letter(case_event("d", 1), "invalidCaseField")

    assert main(["status"]) == 0

    out = capsys.readouterr().out
    lines = {line.split("  ")[0].strip(): line for line in out.splitlines() if line.strip()}
    assert "4 entries" in lines["events stream"]
    assert lines["not yet read (lag)"].split()[-1] == "3"
    assert lines["pending"].split()[-1] == "1"
    assert "invalidCaseField" in out
    assert "w1" in out
    assert out.rstrip().endswith("healthy")


def test_status_lists_the_next_entries_due_on_the_schedule_with_their_due_times(
    db: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed_backlog(db, events=1, read=1)
    entry_ids = _seed_schedule(db, in_flight=1, waiting=7)

    code, shown = _status(capsys)

    assert code == 0
    assert shown["inFlight"] == 1
    assert shown["scheduled"] == 7
    # The soonest first, a few of them: the count says how many wait in all.
    assert shown["nextDue"] == [
        {"entryId": entry_ids[n], "due": DUE + 60 * n, "attempts": n + 1} for n in range(5)
    ]


def test_status_table_shows_what_waits_on_the_schedule_and_when_it_is_due(
    db: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed_backlog(db, events=1, read=1)
    entry_ids = _seed_schedule(db, in_flight=3, waiting=2)

    assert main(["status"]) == 0

    out = capsys.readouterr().out
    lines = {line.split("  ")[0].strip(): line for line in out.splitlines() if line.strip()}
    assert lines["in flight"].split()[-2:] == ["3", "entries"]
    assert lines["waiting on the schedule"].split()[-2:] == ["2", "entries"]
    assert "Next due on the schedule" in out
    rows = [line.split() for line in out.splitlines() if line.strip("│ ").startswith("200-")]
    assert [[cell for cell in row if cell != "│"] for row in rows] == [
        [entry_ids[0], "2027-01-15T08:00:00+00:00", "1"],
        [entry_ids[1], "2027-01-15T08:01:00+00:00", "2"],
    ]


def test_no_schedule_table_when_nothing_waits(
    db: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed_backlog(db, events=1, read=1)

    assert main(["status"]) == 0

    assert "Next due" not in capsys.readouterr().out


def test_entries_on_the_schedule_with_no_worker_alive_make_status_fail(
    db: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    # The stream is drained, but retries wait, and no worker is left to take them.
    _seed_schedule(db, in_flight=0, waiting=2)

    code, shown = _status(capsys)

    assert code == 1
    assert any("no worker is alive and 2 entries wait" in p for p in shown["problems"])


def test_an_open_breaker_makes_status_fail_with_its_reason(
    db: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    db.set(keys.BREAKER_OPEN, "5 calls in a row failed (last: HTTP 503)")

    code, shown = _status(capsys)

    assert code == 1
    assert shown["breakerOpen"] == "5 calls in a row failed (last: HTTP 503)"
    assert any("HTTP 503" in problem for problem in shown["problems"])
    assert main(["status"]) == 1
    assert "UNHEALTHY: the circuit breaker is open" in capsys.readouterr().out


def test_events_waiting_with_no_worker_alive_make_status_fail(
    db: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed_backlog(db, events=2, read=0)

    code, shown = _status(capsys)

    assert code == 1
    assert shown["workers"] == []
    assert any("no worker is alive" in problem for problem in shown["problems"])


def test_a_worker_idle_past_the_bound_is_not_alive(
    db: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed_backlog(db, events=2, read=1)

    code, shown = _status(capsys, "--alive-idle", "0", "--max-pending-age", "1e9")

    assert code == 1
    assert shown["workers"][0]["alive"] is False


def test_events_without_a_consumer_group_count_as_lag(
    db: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    db.xadd(EVENTS, {"event": "{}"})

    code, shown = _status(capsys)

    assert shown["groupExists"] is False
    assert shown["lag"] == 1
    assert code == 1


def test_an_old_pending_entry_makes_status_fail(
    db: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed_backlog(db, events=1, read=1, entry_ids=True)

    code, shown = _status(capsys, "--max-pending-age", "300")

    assert code == 1
    assert shown["oldestPendingAge"] > 300
    assert any("oldest pending entry" in problem for problem in shown["problems"])


def test_an_empty_pipeline_is_healthy(db: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    code, shown = _status(capsys)

    assert code == 0
    assert shown["eventsLength"] == 0
    assert shown["problems"] == []


def test_status_with_redis_unreachable_exits_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Closed now: nothing listens there.
    monkeypatch.setenv("CASESYNC_REDIS_URL", f"redis://:s3cret@127.0.0.1:{port}/0")
    monkeypatch.setenv("CASESYNC_REDIS_TIMEOUT", "2")

    assert main(["status"]) == 2

    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith("casesync status: Redis:")
    assert "s3cret" not in line
