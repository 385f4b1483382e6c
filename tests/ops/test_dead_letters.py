"""Reading the dead-letter stream in pages and counting it within a bound, on a real server."""

from __future__ import annotations

import redis

from ops import dead_letters
from ops.stream_ids import id_after, id_before
from tests.conftest import DEAD_LETTER, DeadLetterFactory, case_event


def test_counts_by_reason_cover_only_the_newest_when_bounded(
    db: redis.Redis, dead_letter: DeadLetterFactory
) -> None:
    for reason in ("old", "old", "new", "new", "new"):
        dead_letter(case_event("e", 1), reason)

    assert dead_letters.count_by_reason(db, DEAD_LETTER, most=3) == ({"new": 3}, True)
    assert dead_letters.count_by_reason(db, DEAD_LETTER, most=5) == ({"new": 3, "old": 2}, False)


def test_a_scan_reads_past_a_page_and_stops_at_until(
    db: redis.Redis, dead_letter: DeadLetterFactory
) -> None:
    ids = [dead_letter(case_event(f"e{n}", 1)) for n in range(5)]

    assert [d.id for d in dead_letters.scan(db, DEAD_LETTER, page=2)] == ids
    assert [d.id for d in dead_letters.scan(db, DEAD_LETTER, until=ids[2], page=2)] == ids[:3]


def test_neighbouring_ids_cross_millisecond_boundaries() -> None:
    assert id_after("5-0") == "5-1"
    assert id_after(f"5-{2**64 - 1}") == "6-0"
    assert id_before("5-1") == "5-0"
    assert id_before("5-0") == f"4-{2**64 - 1}"
