"""The per-case lock, the ledger, the order key and the attempt mark (Lua over Redis)."""

from __future__ import annotations

import datetime as dt
import itertools
import time

import pytest
import redis

from tasks.guards import Busy, Done, EventKeys, Guards, Held, order_key

LEDGER_TTL = 3600.0
T0 = dt.datetime(2026, 11, 28, 10, 15, tzinfo=dt.UTC)


@pytest.fixture
def guards(any_redis: redis.Redis) -> Guards:
    return Guards(any_redis, lock_ttl=30.0, ledger_ttl=LEDGER_TTL, done_ttl=3600)


_entries = itertools.count(1)


def keys(event_id: str = "e1", case_id: int = 7) -> EventKeys:
    """The keys of an event as carried by a new stream entry (each call a new entry)."""
    return EventKeys.of("urn:test", event_id, case_id, f"{next(_entries)}-0")


def finish(
    client: redis.Redis,
    guards: Guards,
    ek: EventKeys,
    token: str,
    **options: object,
) -> None:
    """End an attempt; by default without marking its entry done, so the same keys can be taken
    again (the entry-done marker has a test of its own)."""
    options.setdefault("outcome_written", False)
    pipe = client.pipeline(transaction=True)
    guards.add_finish(pipe, ek, token, **options)  # type: ignore[arg-type]
    pipe.execute()


def test_a_case_lock_excludes_a_second_holder_even_for_another_event(guards: Guards) -> None:
    assert isinstance(guards.acquire(keys("e1"), "first"), Held)

    assert isinstance(guards.acquire(keys("e2"), "second"), Busy)
    assert isinstance(guards.acquire(keys("e1"), "again"), Busy)


def test_locks_of_different_cases_are_independent(guards: Guards) -> None:
    assert isinstance(guards.acquire(keys(case_id=1), "a"), Held)
    assert isinstance(guards.acquire(keys(case_id=2), "b"), Held)


def test_a_lock_whose_holder_died_expires(any_redis: redis.Redis) -> None:
    guards = Guards(any_redis, lock_ttl=0.05, ledger_ttl=LEDGER_TTL, done_ttl=3600)
    assert isinstance(guards.acquire(keys(), "dead"), Held)
    assert isinstance(guards.acquire(keys(), "waiting"), Busy)

    time.sleep(0.12)

    assert isinstance(guards.acquire(keys(), "waiting"), Held)


def test_the_lock_is_released_only_by_its_holder(any_redis: redis.Redis, guards: Guards) -> None:
    ek = keys()
    assert isinstance(guards.acquire(ek, "holder"), Held)

    finish(any_redis, guards, ek, "intruder")
    assert isinstance(guards.acquire(ek, "other"), Busy)

    finish(any_redis, guards, ek, "holder")
    assert isinstance(guards.acquire(ek, "other"), Held)


def test_a_fresh_event_has_no_ledger_order_key_or_mark(guards: Guards) -> None:
    held = guards.acquire(keys(), "t")

    assert isinstance(held, Held)
    assert (held.ledger, held.newest, held.mark) == ("", "", "")
    assert held.outcome_unknown is False
    assert held.deaths == 0


def test_the_ledger_remembers_the_outcome_for_ledger_ttl(
    any_redis: redis.Redis, guards: Guards
) -> None:
    ek = keys()
    guards.acquire(ek, "t")
    finish(any_redis, guards, ek, "t", ledger_value="casesync.update.applied")

    held = guards.acquire(ek, "u")

    assert isinstance(held, Held)
    assert held.ledger == "casesync.update.applied"
    assert LEDGER_TTL - 5 < any_redis.ttl(ek.ledger) <= LEDGER_TTL


def test_finishing_without_a_ledger_value_leaves_no_ledger(
    any_redis: redis.Redis, guards: Guards
) -> None:
    ek = keys()
    guards.acquire(ek, "t")
    finish(any_redis, guards, ek, "t")

    held = guards.acquire(ek, "u")

    assert isinstance(held, Held)
    assert held.ledger == ""


def test_the_order_key_only_moves_forward(any_redis: redis.Redis, guards: Guards) -> None:
    newer, older = order_key(T0, "5-0"), order_key(T0 - dt.timedelta(seconds=1), "9-0")
    for event_id, key in (("newer", newer), ("older", older)):
        ek = keys(event_id)
        assert isinstance(guards.acquire(ek, event_id), Held)
        finish(any_redis, guards, ek, event_id, newest=key)

    held = guards.acquire(keys("third"), "x")

    assert isinstance(held, Held)
    assert held.newest == newer
    assert any_redis.ttl(keys().newest) > LEDGER_TTL - 5


def test_an_empty_order_key_leaves_the_recorded_one(any_redis: redis.Redis, guards: Guards) -> None:
    ek = keys()
    guards.acquire(ek, "t")
    finish(any_redis, guards, ek, "t", newest=order_key(T0, "1-0"))
    guards.acquire(ek, "u")
    finish(any_redis, guards, ek, "u", newest="")

    held = guards.acquire(ek, "v")

    assert isinstance(held, Held)
    assert held.newest == order_key(T0, "1-0")


def test_an_attempt_cut_off_by_a_dying_worker_leaves_a_mark_that_counts_deaths(
    any_redis: redis.Redis,
) -> None:
    # A tiny lock TTL stands in for workers killed mid-PUT: they never finish, the lock expires.
    guards = Guards(any_redis, lock_ttl=0.02, ledger_ttl=LEDGER_TTL, done_ttl=3600)
    ek = keys()
    seen = []
    for n in range(4):
        held = guards.acquire(ek, f"worker-{n}")
        assert isinstance(held, Held)
        seen.append((held.outcome_unknown, held.deaths))
        time.sleep(0.06)

    assert seen == [(False, 0), (True, 1), (True, 2), (True, 3)]
    assert LEDGER_TTL - 5 < any_redis.ttl(ek.mark) <= LEDGER_TTL


def test_a_finished_attempt_clears_the_mark(any_redis: redis.Redis, guards: Guards) -> None:
    ek = keys()
    guards.acquire(ek, "t")
    finish(any_redis, guards, ek, "t")

    held = guards.acquire(ek, "u")

    assert isinstance(held, Held)
    assert held.outcome_unknown is False


def test_a_lost_answer_keeps_the_mark_so_the_next_attempt_reads_the_case_first(
    any_redis: redis.Redis, guards: Guards
) -> None:
    ek = keys()
    first = guards.acquire(ek, "t")
    assert isinstance(first, Held)
    finish(any_redis, guards, ek, "t", unknown_after=first)

    held = guards.acquire(ek, "u")

    assert isinstance(held, Held)
    assert held.outcome_unknown is True
    assert held.deaths == 0, "a lost answer is not a dead worker"
    assert held.since_ms == first.since_ms, "the read-back looks from the first attempt on"


def test_the_marks_of_different_events_of_one_case_are_separate(
    any_redis: redis.Redis, guards: Guards
) -> None:
    first = guards.acquire(keys("e1"), "t")
    assert isinstance(first, Held)
    finish(any_redis, guards, keys("e1"), "t", unknown_after=first)

    held = guards.acquire(keys("e2"), "u")

    assert isinstance(held, Held)
    assert held.mark == ""


def test_an_entry_whose_outcome_is_written_is_done_when_delivered_again(
    any_redis: redis.Redis, guards: Guards
) -> None:
    ek = keys()
    guards.acquire(ek, "t")
    finish(any_redis, guards, ek, "t", outcome_written=True, ledger_value="applied")

    assert isinstance(guards.acquire(ek, "redelivered"), Done)
    assert isinstance(guards.acquire(keys(), "a duplicate, another entry"), Held)


def test_an_open_breaker_holds_every_attempt(any_redis: redis.Redis, guards: Guards) -> None:
    any_redis.set("casesync:breaker:open", "5 calls in a row failed")

    busy = guards.acquire(keys(), "t")

    assert isinstance(busy, Busy)
    assert busy.breaker is True
    assert "5 calls in a row failed" in busy.why
    assert any_redis.get(keys().lock) is None, "no lock is taken while the breaker is open"


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
