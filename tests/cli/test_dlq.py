"""``casesync dlq`` on a real Redis-compatible server, with dead letters as workers write them."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
import redis

from cli.dlq_cmd import since_time
from cli.main import main
from tests.conftest import DEAD_LETTER, EVENTS, DeadLetterFactory, case_event, entries


def _stream_ids(db: redis.Redis, stream: str) -> list[str]:
    return [entry_id for entry_id, _ in entries(db, stream)]


def _listed(capsys: pytest.CaptureFixture[str], *options: str) -> list[dict[str, object]]:
    assert main(["dlq", "list", "--json", *options]) == 0
    listed: list[dict[str, object]] = json.loads(capsys.readouterr().out)
    return listed


def test_list_shows_each_dead_letter_with_its_reason_case_and_event(
    db: redis.Redis, dead_letter: DeadLetterFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    first = dead_letter(case_event("e1", 11), "retriesExhausted")
    second = dead_letter(case_event("e2", 12), "invalidCaseField", http_status=400)

    assert main(["dlq", "list"]) == 0

    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if first in line)
    assert "retriesExhausted" in row
    assert "11" in row
    assert "e1" in row
    assert "urn:test" in row
    row = next(line for line in table.splitlines() if second in line)
    assert "invalidCaseField" in row


def test_list_filters_by_reason(
    db: redis.Redis, dead_letter: DeadLetterFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    dead_letter(case_event("e1", 11), "retriesExhausted")
    invalid = dead_letter("not json", "invalidEvent", http_status=None)

    listed = _listed(capsys, "--reason", "invalidEvent")

    assert [item["id"] for item in listed] == [invalid]
    assert listed[0]["event"] == "not json"


def test_list_since_a_time_leaves_out_older_dead_letters(
    db: redis.Redis, dead_letter: DeadLetterFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    dead_letter(case_event("old", 11))
    time.sleep(0.02)
    cut = dt.datetime.now(dt.UTC).isoformat()
    time.sleep(0.02)
    recent = dead_letter(case_event("new", 12))

    assert [item["id"] for item in _listed(capsys, "--since", cut)] == [recent]
    assert len(_listed(capsys, "--since", "15m")) == 2


def test_since_takes_durations_and_iso_times() -> None:
    now = 1_800_000_000.0
    assert since_time("15m", now) == now - 900
    assert since_time("2h", now) == now - 7200
    assert since_time("1d", now) == now - 86400
    assert (
        since_time("2026-11-28T10:15:00Z", now)
        == dt.datetime(2026, 11, 28, 10, 15, tzinfo=dt.UTC).timestamp()
    )
    # Without an offset, a time is UTC, whatever the machine's time zone.
    assert since_time("2026-11-28T10:15:00", now) == since_time("2026-11-28T10:15:00Z", now)


def test_list_rejects_a_since_it_cannot_read(db: redis.Redis) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["dlq", "list", "--since", "yesterday"])
    assert exit_.value.code == 2


def test_list_limit_says_when_more_match(
    db: redis.Redis, dead_letter: DeadLetterFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = [dead_letter(case_event(f"e{n}", 10 + n)) for n in range(3)]

    assert [item["id"] for item in _listed(capsys, "--limit", "2")] == ids[:2]
    assert main(["dlq", "list", "--limit", "2"]) == 0
    assert "more match" in capsys.readouterr().out


def test_list_of_an_empty_stream_says_so(
    db: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dlq", "list"]) == 0
    assert "no dead letters" in capsys.readouterr().out
    assert _listed(capsys) == []


def test_show_prints_everything_and_the_event_pretty(
    db: redis.Redis, dead_letter: DeadLetterFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    event = case_event("e1", 11, comments=[{"description": "[bold]called[/bold]"}])
    entry = dead_letter(event, "invalidCaseField", detail="field amount missing", http_status=400)

    assert main(["dlq", "show", entry]) == 0

    shown = capsys.readouterr().out
    assert "invalidCaseField" in shown
    assert "field amount missing" in shown
    assert "400" in shown
    # Pretty-printed, and stream text is printed as written, never taken for markup.
    assert json.dumps(event, indent=2) in shown
    assert '"[bold]called[/bold]"' in shown


def test_show_json_keeps_the_original_event_text(
    db: redis.Redis, dead_letter: DeadLetterFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = json.dumps(case_event("e1", 11), separators=(",", ":"))
    entry = dead_letter(raw, "retriesExhausted")

    assert main(["dlq", "show", entry, "--json"]) == 0

    shown = json.loads(capsys.readouterr().out)
    assert shown["id"] == entry
    assert shown["event"] == raw
    assert shown["attempts"] == 8
    assert shown["httpStatus"] == 503


def test_show_of_an_unknown_id_says_so_and_exits_1(
    db: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dlq", "show", "1-0"]) == 1
    assert "no dead letter 1-0" in capsys.readouterr().err


def test_a_malformed_id_is_a_usage_error(db: redis.Redis) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["dlq", "show", "abc"])
    assert exit_.value.code == 2


def test_replay_puts_the_original_event_back_unchanged_and_removes_only_its_dead_letter(
    db: redis.Redis, dead_letter: DeadLetterFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    # Spacing and key order as the upstream service wrote them: replay must not re-serialise.
    raw = (
        '{"specversion":"1.0",  "id":"e1","source":"urn:test","type":"thalamus.case.update",'
        '"time":"2026-11-28T10:15:00Z","data":{"typeCode":"Tel","caseInstanceId":11,'
        '"categoryCode":"Reclamo","comments":[{"description":"caf\\u00e9"}]}}'
    )
    replayed = dead_letter(raw, "retriesExhausted")
    kept = dead_letter(case_event("e2", 12), "retriesExhausted")

    assert main(["dlq", "replay", replayed]) == 0

    assert "replayed " + replayed in capsys.readouterr().out
    [(_, fields)] = entries(db, EVENTS)
    assert fields == {"event": raw}
    assert _stream_ids(db, DEAD_LETTER) == [kept]


def test_replay_by_reason_replays_only_that_reason(
    db: redis.Redis, dead_letter: DeadLetterFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    dead_letter(case_event("e1", 11), "retriesExhausted")
    other = dead_letter(case_event("e2", 12), "invalidCaseField", http_status=400)
    dead_letter(case_event("e3", 13), "retriesExhausted")

    assert main(["dlq", "replay", "--reason", "retriesExhausted", "--json"]) == 0

    results = json.loads(capsys.readouterr().out)
    assert [r["result"] for r in results] == ["replayed", "replayed"]
    replayed = [json.loads(fields["event"])["id"] for _, fields in entries(db, EVENTS)]
    assert replayed == ["e1", "e3"]
    assert _stream_ids(db, DEAD_LETTER) == [other]


def test_replay_refuses_an_event_that_is_still_invalid_and_keeps_it(
    db: redis.Redis, dead_letter: DeadLetterFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    invalid = dead_letter('{"specversion": "1.0"', "invalidEvent", http_status=None)
    dead_letter(case_event("e2", 12), "retriesExhausted")

    assert main(["dlq", "replay", "--all"]) == 1

    out = capsys.readouterr().out
    assert f"refused {invalid}" in out
    assert "not JSON" in out
    assert _stream_ids(db, DEAD_LETTER) == [invalid]
    assert db.xlen(EVENTS) == 1


def test_replay_validates_with_the_configured_limits(
    db: redis.Redis,
    dead_letter: DeadLetterFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    comments = [{"description": f"c{n}"} for n in range(3)]
    entry = dead_letter(case_event("e1", 11, comments=comments), "retriesExhausted")
    monkeypatch.setenv("CASESYNC_MAX_COMMENTS", "2")

    assert main(["dlq", "replay", entry]) == 1

    assert "CASESYNC_MAX_COMMENTS" in capsys.readouterr().out
    assert _stream_ids(db, DEAD_LETTER) == [entry]


def test_dry_run_says_what_would_be_replayed_and_changes_nothing(
    db: redis.Redis, dead_letter: DeadLetterFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    letters = [dead_letter(case_event("e1", 11)), dead_letter("[]", "invalidEvent")]

    assert main(["dlq", "replay", "--all", "--dry-run", "--json"]) == 1

    results = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["result"]) for r in results] == [
        (letters[0], "wouldReplay"),
        (letters[1], "refused"),
    ]
    assert _stream_ids(db, DEAD_LETTER) == letters
    assert db.exists(EVENTS) == 0


def test_replay_of_unknown_ids_reports_them_and_exits_1(
    db: redis.Redis, dead_letter: DeadLetterFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = dead_letter(case_event("e1", 11))

    assert main(["dlq", "replay", entry, "1-0"]) == 1

    assert "no dead letter 1-0" in capsys.readouterr().err
    assert db.xlen(EVENTS) == 1
    assert db.xlen(DEAD_LETTER) == 0


def test_replay_stops_while_the_workers_stay_behind_and_keeps_the_rest(
    db: redis.Redis, dead_letter: DeadLetterFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    letters = [dead_letter(case_event(f"e{n}", 10 + n)) for n in range(3)]
    # Two events no worker has read: over a bound of one, so the second batch must wait.
    db.xgroup_create(EVENTS, "casesync", id="$", mkstream=True)
    db.xadd(EVENTS, {"event": "{}"})

    code = main(["dlq", "replay", "--all", "--batch", "1", "--max-lag", "1", "--max-wait", "0"])

    assert code == 1
    assert "stopped" in capsys.readouterr().err
    assert _stream_ids(db, DEAD_LETTER) == letters[1:]
    assert db.xlen(EVENTS) == 2


def test_replay_needs_ids_or_a_bulk_option(
    db: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dlq", "replay"]) == 2
    assert main(["dlq", "replay", "1-0", "--all"]) == 2
    assert "not both" in capsys.readouterr().err


def test_purge_all_needs_yes_and_deletes_nothing_without_it(
    db: redis.Redis, dead_letter: DeadLetterFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    dead_letter(case_event("e1", 11))

    assert main(["dlq", "purge", "--all"]) == 2

    assert "--yes" in capsys.readouterr().err
    assert db.xlen(DEAD_LETTER) == 1
    assert main(["dlq", "purge", "--all", "--yes"]) == 0
    assert db.xlen(DEAD_LETTER) == 0


def test_purge_all_of_a_reason_keeps_the_others(
    db: redis.Redis, dead_letter: DeadLetterFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    dead_letter("x", "invalidEvent")
    kept = dead_letter(case_event("e1", 11), "retriesExhausted")

    assert main(["dlq", "purge", "--all", "--reason", "invalidEvent", "--yes"]) == 0

    assert "deleted 1 " in capsys.readouterr().out
    assert _stream_ids(db, DEAD_LETTER) == [kept]


def test_purge_by_id_deletes_those_and_reports_unknown_ones(
    db: redis.Redis, dead_letter: DeadLetterFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = dead_letter(case_event("e1", 11))
    kept = dead_letter(case_event("e2", 12))

    assert main(["dlq", "purge", gone, "1-0", "--json"]) == 1

    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"deleted": 1, "notFound": ["1-0"]}
    assert "no dead letter 1-0" in captured.err
    assert _stream_ids(db, DEAD_LETTER) == [kept]


def test_purge_reason_without_all_is_a_usage_error(
    db: redis.Redis, dead_letter: DeadLetterFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    dead_letter("x", "invalidEvent")

    assert main(["dlq", "purge", "--reason", "invalidEvent", "--yes"]) == 2

    assert "--reason goes with --all" in capsys.readouterr().err
    assert db.xlen(DEAD_LETTER) == 1
