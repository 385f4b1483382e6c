"""The per-case lock, the ledger, the order key and the attempt mark (Lua over Redis)."""

from __future__ import annotations

import datetime as dt
import time

import pytest
import redis

from core.guards import Busy, Done, EventKeys, Guards, Held, order_key
from settings import keys as redis_keys

LEDGER_TTL = 3600.0
T0 = dt.datetime(2026, 11, 28, 10, 15, tzinfo=dt.UTC)


@pytest.fixture
def guards(any_redis: redis.Redis) -> Guards:
    return Guards(any_redis, lock_ttl=30.0, ledger_ttl=LEDGER_TTL, done_ttl=3600)


def keys(event_id: str = "e1", case_id: int = 7, entry_id: str = "1-0") -> EventKeys:
    """An event's keys; a new ``entry_id`` is another delivery of it (a duplicate)."""
    return EventKeys.of("urn:test", event_id, case_id, entry_id)


def held(outcome: Held | Busy | Done) -> Held:
    assert isinstance(outcome, Held), outcome
    return outcome


def busy(outcome: Held | Busy | Done) -> Busy:
    assert isinstance(outcome, Busy), outcome
    return outcome


def finish(
    client: redis.Redis,
    guards: Guards,
    ek: EventKeys,
    token: str,
    **options: object,
) -> None:
    pipe = client.pipeline(transaction=True)
    guards.add_finish(pipe, ek, token, **options)  # type: ignore[arg-type]
    pipe.execute()


def test_a_case_lock_excludes_a_second_holder_even_for_another_event(guards: Guards) -> None:
    held(guards.acquire(keys("e1"), "first"))

    assert busy(guards.acquire(keys("e2"), "second")).breaker is False
    assert busy(guards.acquire(keys("e1"), "again")).breaker is False


def test_locks_of_different_cases_are_independent(guards: Guards) -> None:
    held(guards.acquire(keys(case_id=1), "a"))
    held(guards.acquire(keys(case_id=2), "b"))


def test_a_lock_whose_holder_died_expires(any_redis: redis.Redis) -> None:
    guards = Guards(any_redis, lock_ttl=0.05, ledger_ttl=LEDGER_TTL, done_ttl=3600)
    held(guards.acquire(keys(), "dead"))
    busy(guards.acquire(keys(), "waiting"))

    time.sleep(0.12)

    held(guards.acquire(keys(), "waiting"))


def test_the_lock_is_released_only_by_its_holder(any_redis: redis.Redis, guards: Guards) -> None:
    ek = keys()
    held(guards.acquire(ek, "holder"))

    finish(any_redis, guards, ek, "intruder", outcome_written=False)
    busy(guards.acquire(ek, "other"))

    finish(any_redis, guards, ek, "holder", outcome_written=False)
    held(guards.acquire(ek, "other"))


def test_a_fresh_event_has_no_ledger_order_key_or_mark(guards: Guards) -> None:
    fresh = held(guards.acquire(keys(), "t"))

    assert (fresh.ledger, fresh.newest, fresh.mark) == ("", "", "")
    assert fresh.outcome_unknown is False
    assert fresh.deaths == 0


def test_an_open_breaker_makes_the_attempt_wait_without_taking_the_lock(
    any_redis: redis.Redis, guards: Guards
) -> None:
    any_redis.set(redis_keys.BREAKER_OPEN, "5 calls in a row failed")
    ek = keys()

    waiting = busy(guards.acquire(ek, "t"))

    assert waiting.breaker is True
    assert "5 calls in a row failed" in waiting.why
    assert any_redis.exists(ek.lock, ek.mark) == 0
    any_redis.delete(redis_keys.BREAKER_OPEN)
    assert held(guards.acquire(ek, "u")).mark == ""


def test_an_entry_whose_outcome_is_written_is_done_for_done_ttl(
    any_redis: redis.Redis, guards: Guards
) -> None:
    ek = keys()
    held(guards.acquire(ek, "t"))
    finish(any_redis, guards, ek, "t", ledger_value="casesync.update.applied")

    assert guards.acquire(ek, "redelivered") == Done()

    assert 3600 - 5 < any_redis.ttl(ek.entry_done) <= 3600
    # Done neither takes the case's lock nor marks an attempt.
    assert any_redis.exists(ek.lock, ek.mark) == 0
    held(guards.acquire(keys("e2", entry_id="2-0"), "next"))


def test_an_attempt_released_without_an_outcome_leaves_its_entry_open(
    any_redis: redis.Redis, guards: Guards
) -> None:
    ek = keys()
    held(guards.acquire(ek, "t"))
    finish(any_redis, guards, ek, "t", outcome_written=False)

    held(guards.acquire(ek, "retry"))
    assert any_redis.exists(ek.entry_done) == 0


def test_the_ledger_remembers_the_outcome_for_ledger_ttl(
    any_redis: redis.Redis, guards: Guards
) -> None:
    ek = keys()
    held(guards.acquire(ek, "t"))
    finish(any_redis, guards, ek, "t", ledger_value="casesync.update.applied")

    again = held(guards.acquire(keys(entry_id="2-0"), "u"))

    assert again.ledger == "casesync.update.applied"
    assert LEDGER_TTL - 5 < any_redis.ttl(ek.ledger) <= LEDGER_TTL


def test_finishing_without_a_ledger_value_leaves_no_ledger(
    any_redis: redis.Redis, guards: Guards
) -> None:
    ek = keys()
    held(guards.acquire(ek, "t"))
    finish(any_redis, guards, ek, "t")

    again = held(guards.acquire(keys(entry_id="2-0"), "u"))

    assert again.ledger == ""


def test_the_order_key_only_moves_forward(any_redis: redis.Redis, guards: Guards) -> None:
    newer, older = order_key(T0, "5-0"), order_key(T0 - dt.timedelta(seconds=1), "9-0")
    for event_id, key, entry_id in (("newer", newer, "5-0"), ("older", older, "9-0")):
        ek = keys(event_id, entry_id=entry_id)
        held(guards.acquire(ek, event_id))
        finish(any_redis, guards, ek, event_id, newest=key)

    third = held(guards.acquire(keys("third", entry_id="10-0"), "x"))

    assert third.newest == newer
    assert any_redis.ttl(keys().newest) > LEDGER_TTL - 5


def test_an_empty_order_key_leaves_the_recorded_one(any_redis: redis.Redis, guards: Guards) -> None:
    first, second = keys(entry_id="1-0"), keys(entry_id="2-0")
    held(guards.acquire(first, "t"))
    finish(any_redis, guards, first, "t", newest=order_key(T0, "1-0"))
    held(guards.acquire(second, "u"))
    finish(any_redis, guards, second, "u", newest="")

    third = held(guards.acquire(keys(entry_id="3-0"), "v"))

    assert third.newest == order_key(T0, "1-0")


def test_an_attempt_cut_off_by_a_dying_worker_leaves_a_mark_that_counts_deaths(
    any_redis: redis.Redis,
) -> None:
    # A tiny lock TTL stands in for workers killed mid-PUT: they never finish, the lock expires.
    guards = Guards(any_redis, lock_ttl=0.02, ledger_ttl=LEDGER_TTL, done_ttl=3600)
    ek = keys()
    seen = []
    began = set()
    for n in range(4):
        attempt = held(guards.acquire(ek, f"worker-{n}"))
        seen.append((attempt.outcome_unknown, attempt.deaths))
        began.add(attempt.since_ms)
        time.sleep(0.06)

    assert seen == [(False, 0), (True, 1), (True, 2), (True, 3)]
    # Every death keeps when the first attempt of unknown result began.
    assert len(began) == 1
    assert any_redis.get(ek.mark) == f"4:{began.pop()}"
    assert LEDGER_TTL - 5 < any_redis.ttl(ek.mark) <= LEDGER_TTL


def test_an_attempt_marks_itself_with_when_it_began_on_the_redis_clock(
    any_redis: redis.Redis, guards: Guards
) -> None:
    ek = keys()
    seconds, micros = any_redis.time()
    now_ms = seconds * 1000 + micros // 1000

    attempt = held(guards.acquire(ek, "t"))

    assert now_ms - 1000 <= attempt.since_ms <= now_ms + 1000
    assert any_redis.get(ek.mark) == f"1:{attempt.since_ms}"
    assert LEDGER_TTL - 5 < any_redis.ttl(ek.mark) <= LEDGER_TTL


def test_a_finished_attempt_clears_the_mark(any_redis: redis.Redis, guards: Guards) -> None:
    ek = keys()
    held(guards.acquire(ek, "t"))
    finish(any_redis, guards, ek, "t")

    assert any_redis.exists(ek.mark) == 0
    again = held(guards.acquire(keys(entry_id="2-0"), "u"))
    assert again.outcome_unknown is False


def test_a_lost_answer_keeps_the_mark_so_the_next_attempt_reads_the_case_first(
    any_redis: redis.Redis, guards: Guards
) -> None:
    ek = keys()
    first = held(guards.acquire(ek, "t"))
    finish(any_redis, guards, ek, "t", unknown_after=first, outcome_written=False)

    assert any_redis.get(ek.mark) == f"0:{first.since_ms}"
    retry = held(guards.acquire(ek, "u"))

    assert retry.outcome_unknown is True
    assert retry.deaths == 0
    assert retry.since_ms == first.since_ms
    assert retry.mark == f"0:{first.since_ms}"


def test_a_lost_answer_keeps_the_deaths_counted_before_it(any_redis: redis.Redis) -> None:
    guards = Guards(any_redis, lock_ttl=0.02, ledger_ttl=LEDGER_TTL, done_ttl=3600)
    ek = keys()
    held(guards.acquire(ek, "killed"))
    time.sleep(0.06)
    second = held(guards.acquire(ek, "t"))
    finish(any_redis, guards, ek, "t", unknown_after=second, outcome_written=False)

    retry = held(guards.acquire(ek, "u"))

    assert (retry.deaths, retry.since_ms) == (1, second.since_ms)


def test_the_marks_of_different_events_of_one_case_are_separate(
    any_redis: redis.Redis, guards: Guards
) -> None:
    first = held(guards.acquire(keys("e1"), "t"))
    finish(any_redis, guards, keys("e1"), "t", unknown_after=first, outcome_written=False)
    assert any_redis.exists(keys("e1").mark) == 1

    other = held(guards.acquire(keys("e2", entry_id="2-0"), "u"))

    assert other.mark == ""


def test_event_keys_of_different_source_id_pairs_never_collide() -> None:
    one = EventKeys.of("a:b", "c", 1, "1-0")
    two = EventKeys.of("a", "b:c", 1, "1-0")

    assert one.ledger != two.ledger
    assert one.mark != two.mark
    assert one.lock == two.lock


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
