"""``casesync status`` on a real Redis-compatible server, seeded as workers leave the state."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from cli import status_cmd
from cli.main import main
from core.schedule import Job, Schedule
from ops.health import Drain, Watched, sample_drain
from settings import keys
from tests.conftest import EVENTS, RESULTS, DeadLetterFactory, case_event
from tests.refusing_redis import RefusingRedis, refusing_redis

GROUP = "casesync"
QUEUE = "casesync"
#: 2027-01-15T08:00:00Z, as epoch seconds.
DUE = 1_800_000_000.0


def _status(capsys: pytest.CaptureFixture[str], *options: str) -> tuple[int, dict[str, Any]]:
    """``status --json``, without the drain sample unless ``options`` ask for it."""
    code = main(["status", "--json", *(options or ("--no-sample",))])
    shown: dict[str, Any] = json.loads(capsys.readouterr().out)
    return code, shown


def _table(capsys: pytest.CaptureFixture[str], *options: str) -> tuple[int, str]:
    code = main(["status", *(options or ("--no-sample",))])
    return code, capsys.readouterr().out


def _rows(table: str) -> dict[str, str]:
    """The figures of a status table by their names."""
    return {line.split("  ")[0].strip(): line for line in table.splitlines() if line.strip()}


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
    assert 0 <= shown["longestPendingIdle"] < 60
    assert shown["queueDepth"] == 3
    assert shown["inFlight"] == 4
    assert shown["scheduled"] == 2
    assert "retriesWaiting" not in shown
    # Everything not yet ended: unread, pending, in flight, waiting on the schedule.
    assert shown["backlog"] == 3 + 2 + 4 + 2
    assert shown["drain"] is None  # not sampled
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

    code, out = _table(capsys)

    assert code == 0
    lines = _rows(out)
    assert "4 entries" in lines["events stream"]
    assert lines["not yet read (lag)"].split()[-1] == "3"
    assert lines["pending"].split()[-1] == "1"
    assert lines["backlog"].split()[-2:] == ["4", "entries"]
    assert lines["draining"].split()[-2:] == ["not", "sampled"]
    assert "invalidCaseField" in out
    assert "w1" in out
    assert lines["Redis writes"].split()[-1] == "accepted"
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

    code, out = _table(capsys)

    assert code == 0
    lines = _rows(out)
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

    code, out = _table(capsys)

    assert code == 0
    assert "Next due" not in out


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
    code, out = _table(capsys)
    assert code == 1
    assert "UNHEALTHY: the circuit breaker is open" in out


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

    code, shown = _status(capsys, "--no-sample", "--alive-idle", "0")

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


def test_an_entry_published_long_ago_and_read_just_now_is_healthy(
    db: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    # A deep backlog: its entries are old when a worker gets to them, and that is fine.
    _seed_backlog(db, events=3, read=1, entry_ids=True)

    code, shown = _status(capsys, "--no-sample", "--max-pending-idle", "300")

    assert code == 0
    assert shown["pending"] == 1
    assert 0 <= shown["longestPendingIdle"] < 60


def test_an_entry_read_long_ago_and_not_handed_on_makes_status_fail(
    db: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed_backlog(db, events=3, read=2)
    first = db.xpending_range(EVENTS, GROUP, "-", "+", 10)[0]["message_id"]
    # As if worker w1 read it 400 s ago and has been stuck on it since.
    db.xclaim(EVENTS, GROUP, "w1", 0, [first], idle=400_000, justid=True)

    code, shown = _status(capsys, "--no-sample", "--max-pending-idle", "300")

    assert code == 1
    assert shown["longestPendingIdle"] >= 400
    assert any("s ago and not handed on" in p for p in shown["problems"])


def test_the_earlier_name_of_the_pending_bound_still_works(
    db: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed_backlog(db, events=1, read=1)
    entry_id = db.xpending_range(EVENTS, GROUP, "-", "+", 1)[0]["message_id"]
    db.xclaim(EVENTS, GROUP, "w1", 0, [entry_id], idle=400_000, justid=True)

    assert _status(capsys, "--no-sample", "--max-pending-age", "1000")[0] == 0
    assert _status(capsys, "--no-sample", "--max-pending-age", "300")[0] == 1


def _sample_while(
    monkeypatch: pytest.MonkeyPatch, db: redis.Redis, *, arrive: int, end: int
) -> None:
    """Make status's one-second sample see ``arrive`` events published and ``end`` outcomes
    written, at once and on a clock that says one second went by."""

    def meanwhile(seconds: float) -> None:
        for n in range(arrive):
            db.xadd(EVENTS, {"event": json.dumps(case_event(f"new{n}", 500 + n))})
        for _ in range(end):
            db.xadd(RESULTS, {"event": "{}"})

    def sample(client: redis.Redis, watched: Watched, seconds: float) -> Drain | None:
        ticks = iter([100.0, 100.0 + seconds])
        return sample_drain(client, watched, seconds, sleep=meanwhile, clock=lambda: next(ticks))

    monkeypatch.setattr(status_cmd, "sample_drain", sample)


def test_status_reports_how_fast_the_backlog_drains(
    db: redis.Redis, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed_backlog(db, events=40, read=0)
    _sample_while(monkeypatch, db, arrive=10, end=30)

    _, shown = _status(capsys, "--max-pending-idle", "300")

    assert shown["backlog"] == 50
    assert shown["drain"] == {
        "sampleSeconds": 1.0,
        "arrived": 10,
        "ended": 30,
        "arrivingPerSecond": 10.0,
        "endingPerSecond": 30.0,
        "drainingPerSecond": 20.0,
        "emptyInSeconds": 2.5,
    }


def test_status_table_shows_the_drain_rate_and_when_the_backlog_is_gone(
    db: redis.Redis, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed_backlog(db, events=590, read=0)
    _sample_while(monkeypatch, db, arrive=10, end=30)

    _, out = _table(capsys, "--max-pending-idle", "300")

    lines = _rows(out)
    assert lines["backlog"].split()[-2:] == ["600", "entries"]
    assert lines["draining"].split(maxsplit=1)[1].rstrip() == (
        "20.0/s (30.0/s ended, 10.0/s arrived), empty in about 30 s"
    )


def test_a_growing_backlog_reads_as_growing(
    db: redis.Redis, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed_backlog(db, events=5, read=0)
    _sample_while(monkeypatch, db, arrive=30, end=10)

    _, shown = _status(capsys, "--max-pending-idle", "300")
    assert shown["drain"]["drainingPerSecond"] == -20.0
    assert shown["drain"]["emptyInSeconds"] is None

    _sample_while(monkeypatch, db, arrive=30, end=10)
    _, out = _table(capsys, "--max-pending-idle", "300")
    assert "growing 20.0/s" in _rows(out)["draining"]


def test_status_samples_the_drain_for_a_second_by_default(
    db: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed_backlog(db, events=2, read=2)

    code, shown = _status(capsys, "--max-pending-idle", "300")

    assert code == 0
    assert shown["drain"]["arrived"] == shown["drain"]["ended"] == 0
    assert shown["drain"]["sampleSeconds"] == pytest.approx(status_cmd.SAMPLE_SECONDS, abs=0.5)
    assert shown["drain"]["emptyInSeconds"] is None


def test_an_empty_pipeline_is_healthy(db: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    code, shown = _status(capsys)

    assert code == 0
    assert shown["eventsLength"] == 0
    assert shown["redisRefusesWrites"] is None
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


@pytest.fixture
def refusing(monkeypatch: pytest.MonkeyPatch) -> Iterator[RefusingRedis]:
    """A Redis of its own that the test makes refuse writes, which ``casesync`` commands use."""
    with refusing_redis() as running:
        monkeypatch.setenv("CASESYNC_REDIS_URL", running.url)
        monkeypatch.setenv("COLUMNS", "250")
        yield running


@pytest.mark.parametrize(
    ("fault", "clear", "code"),
    [
        (RefusingRedis.fill_memory, RefusingRedis.free_memory, "OOM"),
        (RefusingRedis.promote_standby, RefusingRedis.promote_primary, "READONLY"),
    ],
    ids=["full", "read-only"],
)
def test_a_redis_that_refuses_writes_makes_status_fail_saying_why(
    refusing: RefusingRedis,
    capsys: pytest.CaptureFixture[str],
    fault: Callable[[RefusingRedis], None],
    clear: Callable[[RefusingRedis], None],
    code: str,
) -> None:
    _seed_backlog(refusing.primary, events=3, read=1)
    fault(refusing)
    try:
        exit_code, shown = _status(capsys)
        table_code, table = _table(capsys)
    finally:
        clear(refusing)

    assert (exit_code, table_code) == (1, 1)
    assert shown["redisRefusesWrites"].startswith(f"{code}: ")
    assert shown["problems"] == [f"Redis refuses writes: {shown['redisRefusesWrites']}"]
    assert shown["eventsLength"] == 3, "the rest of the report is read as usual"
    assert _rows(table)["Redis writes"].split()[2:4] == ["REFUSED:", f"{code}:"]
    assert f"UNHEALTHY: Redis refuses writes: {code}: " in table
    assert _status(capsys)[0] == 0, "healthy again once Redis takes writes"
