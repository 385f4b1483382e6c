"""``casesync publish``: events from a JSON-lines file onto the events stream, exit codes as the
other commands have them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from cli.main import main
from ops.processes import free_port
from tests.conftest import EVENTS, case_event, entries


def _events_file(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "events.jsonl"
    lines = [json.dumps(case_event(f"e{n}", 10 + n)) for n in range(count)]
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    return path


def test_publish_adds_each_line_to_the_events_stream_in_order(
    db: redis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["publish", str(_events_file(tmp_path, 3))]) == 0

    published = [json.loads(fields["event"])["id"] for _, fields in entries(db, EVENTS)]
    assert published == ["e0", "e1", "e2"]
    assert capsys.readouterr().out == f"published 3 events to {EVENTS}\n"


def test_publish_of_a_missing_file_exits_1_with_one_line(
    db: redis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["publish", str(tmp_path / "nowhere.jsonl")]) == 1

    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("casesync publish: ")
    assert "nowhere.jsonl" in line


def test_publish_with_redis_unreachable_exits_2_with_one_line_naming_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Free when asked, so nothing listens there: connections are refused.
    monkeypatch.setenv("CASESYNC_REDIS_URL", f"redis://:s3cret@127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("CASESYNC_REDIS_TIMEOUT", "2")

    assert main(["publish", str(_events_file(tmp_path, 2))]) == 2

    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith("casesync publish: Redis:")
    assert "s3cret" not in line
