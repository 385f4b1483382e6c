"""The case locks, the ledger, the order keys and the attempt marks of a batch (Lua over Redis),
on fakeredis and on the real server."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence

import pytest
import redis

from core.guards import BreakerOpen, CaseHold, EventKeys, Guards, lock_key, order_key
from settings import keys as redis_keys

LEDGER_TTL = 3600.0
T0 = dt.datetime(2026, 11, 28, 10, 15, tzinfo=dt.UTC)
APPLIED = "casesync.update.applied"


@pytest.fixture
def guards(any_redis: redis.Redis) -> Guards:
    return Guards(any_redis, lock_ttl=30.0, ledger_ttl=LEDGER_TTL)


def keys(event_id: str = "e1", entry_id: str = "1-0") -> EventKeys:
    """An event's keys; a new ``entry_id`` is another delivery of it (a duplicate)."""
    return EventKeys.of("urn:test", event_id, entry_id)


def pending(client: redis.Redis, *events: EventKeys) -> None:
    """The events' entries are not finished: intake left their jobs in the schedule."""
    client.hset(redis_keys.JOBS, mapping={ek.entry_id: "{}" for ek in events})


def take(guards: Guards, token: str, *cases: tuple[int, Sequence[EventKeys]]) -> list[CaseHold]:
    holds = guards.acquire(list(cases), token)
    assert not isinstance(holds, BreakerOpen), holds
    return holds


def take_one(guards: Guards, token: str, ek: EventKeys, case_id: int = 7) -> CaseHold:
    [hold] = take(guards, token, (case_id, [ek]))
    return hold


def end_event(
    client: redis.Redis,
    guards: Guards,
    ek: EventKeys,
    *,
    ledger: str | None = None,
    mark_since: int | None = None,
) -> None:
    pipe = client.pipeline(transaction=True)
    guards.add_event_end(pipe, ek, ledger_value=ledger, mark_since=mark_since)
    pipe.execute()


def release(
    client: redis.Redis, guards: Guards, case_id: int, token: str, newest: str = ""
) -> None:
    pipe = client.pipeline(transaction=True)
    guards.add_release(pipe, case_id, token, newest)
    pipe.execute()


def redis_now_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


# --- locks ------------------------------------------------------------------------------------


def test_a_case_lock_excludes_a_second_task_even_for_another_event(
    any_redis: redis.Redis, guards: Guards
) -> None:
    pending(any_redis, keys("e1"), keys("e2", "2-0"))
    assert take_one(guards, "first", keys("e1")).held

    assert take_one(guards, "second", keys("e2", "2-0")).held is False
    assert take_one(guards, "again", keys("e1")).held is False
    assert any_redis.get(lock_key(7)) == "first"


def test_acquire_over_several_cases_says_per_case_whether_it_is_held(
    any_redis: redis.Redis, guards: Guards
) -> None:
    a, b, c = keys("a", "1-0"), keys("b", "2-0"), keys("c", "3-0")
    pending(any_redis, a, b, c)
    take_one(guards, "other-task", keys("x", "9-0"), case_id=2)

    holds = take(guards, "t", (1, [a]), (2, [b]), (3, [c]))

    assert [(hold.case_id, hold.held) for hold in holds] == [(1, True), (2, False), (3, True)]
    assert [any_redis.get(lock_key(case)) for case in (1, 2, 3)] == ["t", "other-task", "t"]
    assert 29_000 < any_redis.pttl(lock_key(1)) <= 30_000


def test_a_lock_whose_holder_died_expires(any_redis: redis.Redis) -> None:
    guards = Guards(any_redis, lock_ttl=0.05, ledger_ttl=LEDGER_TTL)
    pending(any_redis, keys())
    assert take_one(guards, "dead", keys()).held
    assert take_one(guards, "waiting", keys()).held is False

    time.sleep(0.12)

    assert take_one(guards, "waiting", keys()).held


def test_a_lock_is_released_only_by_its_holder(any_redis: redis.Redis, guards: Guards) -> None:
    pending(any_redis, keys())
    take_one(guards, "holder", keys())

    release(any_redis, guards, 7, "intruder")
    assert take_one(guards, "other", keys()).held is False

    release(any_redis, guards, 7, "holder")
    assert take_one(guards, "other", keys()).held


def test_giving_locks_back_frees_only_those_still_owned_and_keeps_order_keys(
    any_redis: redis.Redis, guards: Guards
) -> None:
    pending(any_redis, keys())
    take(guards, "t", (1, [keys()]), (2, [keys()]))
    release(any_redis, guards, 1, "t", order_key(T0, "1-0"))  # case 1 finished normally
    take_one(guards, "u", keys(), case_id=1)  # and another task took it since

    guards.release({(lock_key(1), "t"), (lock_key(2), "t")})

    assert any_redis.get(lock_key(1)) == "u"
    assert any_redis.exists(lock_key(2)) == 0
    assert any_redis.get(redis_keys.case_key(redis_keys.CASE_NEWEST, 1)) == order_key(T0, "1-0")


# --- the breaker ------------------------------------------------------------------------------


def test_an_open_breaker_takes_no_lock_and_sets_no_mark(
    any_redis: redis.Redis, guards: Guards
) -> None:
    any_redis.set(redis_keys.BREAKER_OPEN, "5 calls in a row failed")
    a, b = keys("a", "1-0"), keys("b", "2-0")
    pending(any_redis, a, b)

    holds = guards.acquire([(1, [a]), (2, [b])], "t")

    assert holds == BreakerOpen("5 calls in a row failed")
    assert any_redis.exists(lock_key(1), lock_key(2), a.mark, b.mark) == 0
    any_redis.delete(redis_keys.BREAKER_OPEN)
    assert take_one(guards, "u", a).events[0].mark == ""


# --- what acquire reads and marks --------------------------------------------------------------


def test_a_fresh_event_has_no_ledger_order_key_or_mark(
    any_redis: redis.Redis, guards: Guards
) -> None:
    pending(any_redis, keys())

    hold = take_one(guards, "t", keys())

    assert hold.newest == ""
    [state] = hold.events
    assert (state.done, state.ledger, state.mark) == (False, "", "")
    assert state.outcome_unknown is False


def test_acquire_reads_ledger_mark_and_done_per_event_and_marks_only_held_open_events(
    any_redis: redis.Redis, guards: Guards
) -> None:
    applied, marked, fresh, finished = (
        keys("applied", "1-0"),
        keys("marked", "2-0"),
        keys("fresh", "3-0"),
        keys("finished", "4-0"),
    )
    in_busy_case = keys("busy", "5-0")
    pending(any_redis, applied, marked, fresh, in_busy_case)  # `finished` has no job left
    any_redis.set(applied.ledger, APPLIED)
    any_redis.set(marked.mark, "1700000000000")
    take_one(guards, "other-task", keys("x", "9-0"), case_id=2)
    before = redis_now_ms(any_redis)

    held_case, busy_case = take(
        guards, "t", (1, [applied, marked, fresh, finished]), (2, [in_busy_case])
    )

    states = held_case.events
    assert [s.done for s in states] == [False, False, False, True]
    assert [s.ledger for s in states] == [APPLIED, "", "", ""]
    assert [s.mark for s in states] == ["", "1700000000000", "", ""]
    assert [s.outcome_unknown for s in states] == [False, True, False, False]
    assert states[1].since_ms == 1_700_000_000_000
    assert all(before - 1000 <= s.since_ms <= before + 1000 for s in (states[0], states[2]))
    # Marks are set for the held case's open events only, each with its `since`.
    assert any_redis.get(applied.mark) == str(states[0].since_ms)
    assert any_redis.get(marked.mark) == "1700000000000"
    assert any_redis.get(fresh.mark) == str(states[2].since_ms)
    assert any_redis.exists(finished.mark, in_busy_case.mark) == 0
    [busy_state] = busy_case.events
    assert (busy_case.held, busy_state.done, busy_state.ledger, busy_state.mark) == (
        False,
        False,
        "",
        "",
    )


def test_an_attempt_marks_itself_with_when_it_began_on_the_redis_clock(
    any_redis: redis.Redis, guards: Guards
) -> None:
    ek = keys()
    pending(any_redis, ek)
    now_ms = redis_now_ms(any_redis)

    [state] = take_one(guards, "t", ek).events

    assert now_ms - 1000 <= state.since_ms <= now_ms + 1000
    assert any_redis.get(ek.mark) == str(state.since_ms)
    assert LEDGER_TTL - 5 < any_redis.ttl(ek.mark) <= LEDGER_TTL


def test_an_attempt_cut_off_by_a_dying_worker_keeps_when_the_first_unknown_attempt_began(
    any_redis: redis.Redis,
) -> None:
    # A tiny lock TTL stands in for workers killed mid-PUT: they never finish, the lock expires.
    guards = Guards(any_redis, lock_ttl=0.02, ledger_ttl=LEDGER_TTL)
    ek = keys()
    pending(any_redis, ek)
    seen = []
    for n in range(3):
        [state] = take_one(guards, f"worker-{n}", ek).events
        seen.append((state.outcome_unknown, state.since_ms))
        time.sleep(0.05)

    first_since = seen[0][1]
    assert seen == [(False, first_since), (True, first_since), (True, first_since)]
    assert any_redis.get(ek.mark) == str(first_since)


def test_an_entry_whose_job_is_gone_reads_as_done_and_gets_no_mark(
    any_redis: redis.Redis, guards: Guards
) -> None:
    ek = keys()  # its outcome was written: no job in the schedule

    hold = take_one(guards, "redelivered", ek)

    assert hold.events[0].done is True
    assert any_redis.exists(ek.mark) == 0


# --- an event's end ---------------------------------------------------------------------------


def test_the_ledger_remembers_the_outcome_for_ledger_ttl(
    any_redis: redis.Redis, guards: Guards
) -> None:
    ek, again = keys(), keys(entry_id="2-0")
    pending(any_redis, ek, again)
    take_one(guards, "t", ek)
    end_event(any_redis, guards, ek, ledger=APPLIED)
    release(any_redis, guards, 7, "t")

    [state] = take_one(guards, "u", again).events

    assert state.ledger == APPLIED
    assert LEDGER_TTL - 5 < any_redis.ttl(ek.ledger) <= LEDGER_TTL


def test_ending_without_a_ledger_value_leaves_no_ledger(
    any_redis: redis.Redis, guards: Guards
) -> None:
    ek, again = keys(), keys(entry_id="2-0")
    pending(any_redis, ek, again)
    take_one(guards, "t", ek)
    end_event(any_redis, guards, ek)
    release(any_redis, guards, 7, "t")

    assert take_one(guards, "u", again).events[0].ledger == ""


def test_an_ended_attempt_clears_the_mark(any_redis: redis.Redis, guards: Guards) -> None:
    ek, again = keys(), keys(entry_id="2-0")
    pending(any_redis, ek, again)
    take_one(guards, "t", ek)
    end_event(any_redis, guards, ek)
    release(any_redis, guards, 7, "t")

    assert any_redis.exists(ek.mark) == 0
    assert take_one(guards, "u", again).events[0].outcome_unknown is False


def test_a_lost_answer_keeps_the_mark_so_the_next_attempt_reads_the_case_first(
    any_redis: redis.Redis, guards: Guards
) -> None:
    ek = keys()
    pending(any_redis, ek)
    [first] = take_one(guards, "t", ek).events
    end_event(any_redis, guards, ek, mark_since=first.since_ms)
    release(any_redis, guards, 7, "t")

    assert any_redis.get(ek.mark) == str(first.since_ms)
    assert LEDGER_TTL - 5 < any_redis.ttl(ek.mark) <= LEDGER_TTL
    [retry] = take_one(guards, "u", ek).events

    assert retry.outcome_unknown is True
    assert retry.since_ms == first.since_ms


def test_the_marks_of_different_events_of_one_case_are_separate(
    any_redis: redis.Redis, guards: Guards
) -> None:
    e1, e2 = keys("e1"), keys("e2", "2-0")
    pending(any_redis, e1, e2)
    [first] = take_one(guards, "t", e1).events
    end_event(any_redis, guards, e1, mark_since=first.since_ms)
    release(any_redis, guards, 7, "t")

    [other] = take_one(guards, "u", e2).events

    assert other.mark == ""
    assert any_redis.get(e1.mark) == str(first.since_ms)


# --- order keys -------------------------------------------------------------------------------


def test_the_order_key_only_moves_forward(any_redis: redis.Redis, guards: Guards) -> None:
    newer, older = order_key(T0, "5-0"), order_key(T0 - dt.timedelta(seconds=1), "9-0")
    pending(any_redis, keys())
    for token, key in (("newer", newer), ("older", older)):
        take_one(guards, token, keys())
        release(any_redis, guards, 7, token, key)

    assert take_one(guards, "x", keys()).newest == newer
    newest_key = redis_keys.case_key(redis_keys.CASE_NEWEST, 7)
    assert any_redis.ttl(newest_key) > LEDGER_TTL - 5


def test_an_empty_order_key_leaves_the_recorded_one(any_redis: redis.Redis, guards: Guards) -> None:
    pending(any_redis, keys())
    take_one(guards, "t", keys())
    release(any_redis, guards, 7, "t", order_key(T0, "1-0"))
    take_one(guards, "u", keys())
    release(any_redis, guards, 7, "u", "")

    assert take_one(guards, "v", keys()).newest == order_key(T0, "1-0")


def test_a_release_by_another_token_still_advances_the_order_key_but_keeps_the_lock(
    any_redis: redis.Redis, guards: Guards
) -> None:
    pending(any_redis, keys())
    take_one(guards, "holder", keys())

    release(any_redis, guards, 7, "late", order_key(T0, "1-0"))

    assert any_redis.get(lock_key(7)) == "holder"
    release(any_redis, guards, 7, "holder")
    assert take_one(guards, "next", keys()).newest == order_key(T0, "1-0")


def test_the_order_keys_of_different_cases_are_separate(
    any_redis: redis.Redis, guards: Guards
) -> None:
    pending(any_redis, keys())
    take(guards, "t", (1, [keys()]), (2, [keys()]))
    release(any_redis, guards, 1, "t", order_key(T0, "1-0"))
    release(any_redis, guards, 2, "t")

    one, two = take(guards, "u", (1, [keys()]), (2, [keys()]))

    assert (one.newest, two.newest) == (order_key(T0, "1-0"), "")


# --- keys (pure) ------------------------------------------------------------------------------


def test_event_keys_of_different_source_id_pairs_never_collide() -> None:
    one = EventKeys.of("a:b", "c", "1-0")
    two = EventKeys.of("a", "b:c", "1-0")

    assert one.ledger != two.ledger
    assert one.mark != two.mark


def test_order_key_sorts_by_time_first() -> None:
    earlier = order_key(T0, "9999999999999-99")
    later = order_key(T0 + dt.timedelta(microseconds=1), "1-0")

    assert earlier < later


def test_order_key_breaks_time_ties_by_stream_position() -> None:
    ordered = ["1795860900000-0", "1795860900000-1", "1795860900000-10", "1795860900001-0"]

    keys_ = [order_key(T0, entry_id) for entry_id in ordered]

    assert keys_ == sorted(keys_)
    assert len(set(keys_)) == len(keys_)


def test_order_key_compares_instants_not_local_times() -> None:
    plus_one = dt.timezone(dt.timedelta(hours=1))
    same_instant = dt.datetime(2026, 11, 28, 11, 15, tzinfo=plus_one)

    assert order_key(same_instant, "1-0") == order_key(T0, "1-0")
    assert order_key(T0.replace(tzinfo=plus_one), "1-0") < order_key(T0, "1-0")
