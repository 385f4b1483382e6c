"""The per-case lock, the ledger, the order key and the attempt mark (Lua over Redis)."""

from __future__ import annotations

import datetime as dt
import time

import pytest
import redis

from tasks.guards import EventKeys, Guards, order_key

LEDGER_TTL = 3600.0
T0 = dt.datetime(2026, 11, 28, 10, 15, tzinfo=dt.UTC)


@pytest.fixture
def guards(any_redis: redis.Redis) -> Guards:
    return Guards(any_redis, lock_ttl=30.0, ledger_ttl=LEDGER_TTL, done_ttl=3600)


def keys(event_id: str = "e1", case_id: int = 7) -> EventKeys:
    return EventKeys.of("urn:test", event_id, case_id, "1-0")


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
    assert guards.acquire(keys("e1"), "first") is not None

    assert guards.acquire(keys("e2"), "second") is None
    assert guards.acquire(keys("e1"), "again") is None


def test_locks_of_different_cases_are_independent(guards: Guards) -> None:
    assert guards.acquire(keys(case_id=1), "a") is not None
    assert guards.acquire(keys(case_id=2), "b") is not None


def test_a_lock_whose_holder_died_expires(any_redis: redis.Redis) -> None:
    guards = Guards(any_redis, lock_ttl=0.05, ledger_ttl=LEDGER_TTL, done_ttl=3600)
    assert guards.acquire(keys(), "dead") is not None
    assert guards.acquire(keys(), "waiting") is None

    time.sleep(0.12)

    assert guards.acquire(keys(), "waiting") is not None


def test_the_lock_is_released_only_by_its_holder(any_redis: redis.Redis, guards: Guards) -> None:
    ek = keys()
    assert guards.acquire(ek, "holder") is not None

    finish(any_redis, guards, ek, "intruder")
    assert guards.acquire(ek, "other") is None

    finish(any_redis, guards, ek, "holder")
    assert guards.acquire(ek, "other") is not None


def test_a_fresh_event_has_no_ledger_order_key_or_mark(guards: Guards) -> None:
    held = guards.acquire(keys(), "t")

    assert held is not None
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

    assert held is not None
    assert held.ledger == "casesync.update.applied"
    assert LEDGER_TTL - 5 < any_redis.ttl(ek.ledger) <= LEDGER_TTL


def test_finishing_without_a_ledger_value_leaves_no_ledger(
    any_redis: redis.Redis, guards: Guards
) -> None:
    ek = keys()
    guards.acquire(ek, "t")
    finish(any_redis, guards, ek, "t")

    held = guards.acquire(ek, "u")

    assert held is not None
    assert held.ledger == ""


def test_the_order_key_only_moves_forward(any_redis: redis.Redis, guards: Guards) -> None:
    newer, older = order_key(T0, "5-0"), order_key(T0 - dt.timedelta(seconds=1), "9-0")
    for event_id, key in (("newer", newer), ("older", older)):
        ek = keys(event_id)
        assert guards.acquire(ek, event_id) is not None
        finish(any_redis, guards, ek, event_id, newest=key)

    held = guards.acquire(keys("third"), "x")

    assert held is not None
    assert held.newest == newer
    assert any_redis.ttl(keys().newest) > LEDGER_TTL - 5


def test_an_empty_order_key_leaves_the_recorded_one(any_redis: redis.Redis, guards: Guards) -> None:
    ek = keys()
    guards.acquire(ek, "t")
    finish(any_redis, guards, ek, "t", newest=order_key(T0, "1-0"))
    guards.acquire(ek, "u")
    finish(any_redis, guards, ek, "u", newest="")

    held = guards.acquire(ek, "v")

    assert held is not None
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
        assert held is not None
        seen.append((held.outcome_unknown, held.deaths))
        time.sleep(0.06)

    assert seen == [(False, 0), (True, 1), (True, 2), (True, 3)]
    assert LEDGER_TTL - 5 < any_redis.ttl(ek.mark) <= LEDGER_TTL


def test_a_finished_attempt_clears_the_mark(any_redis: redis.Redis, guards: Guards) -> None:
    ek = keys()
    guards.acquire(ek, "t")
    finish(any_redis, guards, ek, "t")

    held = guards.acquire(ek, "u")

    assert held is not None
    assert held.outcome_unknown is False


def test_a_lost_answer_keeps_the_mark_so_the_next_attempt_reads_the_case_first(
    any_redis: redis.Redis, guards: Guards
) -> None:
    ek = keys()
    guards.acquire(ek, "t")
    finish(any_redis, guards, ek, "t", unknown_after=0)

    held = guards.acquire(ek, "u")

    assert held is not None
    assert held.outcome_unknown is True
    assert held.deaths == 0


def test_the_marks_of_different_events_of_one_case_are_separate(
    any_redis: redis.Redis, guards: Guards
) -> None:
    guards.acquire(keys("e1"), "t")
    finish(any_redis, guards, keys("e1"), "t", unknown_after=2)

    held = guards.acquire(keys("e2"), "u")

    assert held is not None
    assert held.mark == ""


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
