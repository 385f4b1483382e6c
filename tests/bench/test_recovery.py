"""The crash-recovery scenario's counting and its target, without processes."""

from __future__ import annotations

import math
from typing import Any

from bench.measure import Measurement, Recovery
from bench.recovery import RecoveryRun, Tally, comments_by_case, posted_twice
from bench.report import recovery_target, targets
from bench.workload import event_json


def _outcome(request: str, kind: str = "applied") -> dict[str, Any]:
    return {"type": f"casesync.update.{kind}", "data": {"requestId": request}}


def test_the_tally_counts_missing_doubled_and_not_applied_events_of_this_run_only() -> None:
    tally = Tally(frozenset({"a", "b", "c"}))
    tally.add([("1-0", _outcome("a")), ("2-0", _outcome("other run"))])
    tally.add([("3-0", _outcome("b", "deadlettered")), ("4-0", _outcome("a"))])
    assert (tally.missing, tally.doubled, tally.not_applied) == (1, 1, 1)
    assert not tally.complete
    assert tally.last_id == "4-0", "the next read starts after the last entry seen"
    assert tally.first["a"] == (1, True), "latency is taken from an event's first outcome"
    tally.add([("5-0", _outcome("c"))])
    assert tally.complete


def test_a_comment_on_its_case_twice_is_counted_once_per_event() -> None:
    events = [event_json("r", 0, 7), event_json("r", 1, 8)]
    wanted = comments_by_case(events)
    assert wanted == {7: ["benchmark event 0"], 8: ["benchmark event 1"]}
    on_case = {
        7: ["seeded", "benchmark event 0", "benchmark event 0", "benchmark event 0"],
        8: ["benchmark event 1"],
    }
    assert posted_twice(wanted, on_case) == 1
    assert posted_twice(wanted, {7: [], 8: []}) == 0, "a missing comment is not a double"


def test_a_small_run_is_killed_after_a_fifth_of_its_events() -> None:
    assert RecoveryRun().kill_after == 60
    assert RecoveryRun(events=20).kill_after == 4
    assert RecoveryRun(events=2).kill_after == 1


def _row(recovery: Recovery) -> Measurement:
    row = Measurement("pipeline threads recovery", "pipeline", 20, 300, 9, 3, 1, [], 2)
    row.recovery = recovery
    return row


def _recovery(seconds: float, complete: bool, missing: int = 0) -> Recovery:
    return Recovery(300, seconds, complete, 300.0, 75, missing, 0, 0)


def test_recovery_within_the_limit_holds_and_shows_its_seconds() -> None:
    target = recovery_target([_row(_recovery(42.0, True))])
    assert (target.shown(), target.verdict()) == ("42.00", "PASS")


def test_a_wait_that_ran_out_shows_greater_than_the_bound_and_misses() -> None:
    target = recovery_target([_row(_recovery(300.0, False, missing=31))])
    assert (target.shown(), target.verdict()) == ("> 300.0", "MISS")
    assert "missing 31" in target.detail
    assert "ran out at 300 s" in target.detail


def test_a_bound_below_the_limit_cannot_decide_the_target() -> None:
    assert recovery_target([_row(_recovery(5.0, False))]).verdict() == "not measured"


def test_every_target_is_listed_even_when_nothing_was_measured() -> None:
    found = targets([], 100.0)
    assert [target.name.split(" ")[0] for target in found] == [
        "pipeline",
        "pipeline",
        "CPU",
        "Redis",
        "p99",
        "two",
        "peak",
        "after",
    ]
    assert all(math.isnan(target.measured) for target in found)
    assert {target.verdict() for target in found} == {"not measured"}
