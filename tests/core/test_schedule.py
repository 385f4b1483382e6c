"""The schedule of unfinished entries (jobs, leases, due times) and the lease keeper, on fakeredis
and on the real server (their Lua scripts included)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from core.guards import lock_key
from core.schedule import Job, LeaseKeeper, Schedule, Waiting
from settings import keys
from tests.core.conftest import Clock

LEASE = 60.0
NOW = 1_795_861_200.0  # the Clock's start (tests/core/conftest.py)


@pytest.fixture
def schedule(any_redis: redis.Redis) -> Schedule:
    return Schedule(any_redis, lease=LEASE)


@pytest.fixture
def keeper(schedule: Schedule, clock: Clock) -> Iterator[LeaseKeeper]:
    keeper = LeaseKeeper(schedule, interval=3600.0, lock_ttl=30.0, clock=clock)
    yield keeper
    keeper.close()


def job(n: int, **state: Any) -> Job:
    return Job(f"{n}-0", f'{{"id": "e{n}"}}', **state)


def lease(client: redis.Redis, schedule: Schedule, jobs: list[Job], now: float = NOW) -> None:
    """Lease ``jobs`` as intake does, in its MULTI."""
    pipe = client.pipeline(transaction=True)
    schedule.add_leased(pipe, jobs, now)
    pipe.execute()


def retry(client: redis.Redis, schedule: Schedule, retried: Job, due: float) -> None:
    pipe = client.pipeline(transaction=True)
    schedule.add_retry(pipe, retried, due)
    pipe.execute()


def finish(client: redis.Redis, entry_id: str) -> None:
    pipe = client.pipeline(transaction=True)
    Schedule.add_finished(pipe, entry_id)
    pipe.execute()


def scores(client: redis.Redis, key: str) -> dict[str, float]:
    reply: Any = client.zrange(key, 0, -1, withscores=True)
    return {entry_id: score / 1000 for entry_id, score in reply}


# --- leasing and taking what is due -----------------------------------------------------------


def test_new_jobs_are_kept_and_leased_until_a_lease_from_now(
    any_redis: redis.Redis, schedule: Schedule
) -> None:
    lease(any_redis, schedule, [job(1), job(2)])

    assert scores(any_redis, keys.LEASES) == {"1-0": NOW + LEASE, "2-0": NOW + LEASE}
    assert scores(any_redis, keys.DUE) == {}
    assert Job.restored("1-0", str(any_redis.hget(keys.JOBS, "1-0")), 0) == job(1)


def test_nothing_is_taken_before_its_lease_runs_out_or_its_time_comes(
    any_redis: redis.Redis, schedule: Schedule
) -> None:
    lease(any_redis, schedule, [job(1), job(2)])
    retry(any_redis, schedule, job(2, attempts=1), NOW + 5)

    taken = schedule.take_due(NOW + 4.9, 10)

    assert taken.jobs == []
    assert taken.next_due == NOW + 5
    assert taken.lost_now == 0


def test_an_expired_lease_and_a_due_retry_are_taken_into_new_leases(
    any_redis: redis.Redis, schedule: Schedule
) -> None:
    lease(any_redis, schedule, [job(1), job(2), job(3)])
    retry(any_redis, schedule, job(2, attempts=2, first_attempt_at=NOW, waits=1), NOW + 5)
    retry(any_redis, schedule, job(3, attempts=1), NOW + 600)
    now = NOW + LEASE + 1

    taken = schedule.take_due(now, 10)

    # The expired lease counts one loss (its worker died); the retry comes back as it was left.
    assert taken.jobs == [job(1, lost=1), job(2, attempts=2, first_attempt_at=NOW, waits=1)]
    assert taken.lost_now == 1
    assert taken.next_due == now + LEASE
    assert scores(any_redis, keys.LEASES) == {"1-0": now + LEASE, "2-0": now + LEASE}
    assert scores(any_redis, keys.DUE) == {"3-0": NOW + 600}


def test_losses_add_up_over_expired_leases_and_survive_a_retry(
    any_redis: redis.Redis, schedule: Schedule
) -> None:
    lease(any_redis, schedule, [job(1)])
    [first] = schedule.take_due(NOW + LEASE + 1, 10).jobs
    [second] = schedule.take_due(NOW + 2 * LEASE + 2, 10).jobs
    retry(any_redis, schedule, second, NOW + 2 * LEASE + 3)

    taken = schedule.take_due(NOW + 2 * LEASE + 3, 10)

    assert (first.lost, second.lost) == (1, 2)
    assert taken.jobs == [job(1, lost=2)]
    assert taken.lost_now == 0


def test_at_most_most_entries_are_taken_expired_leases_first(
    any_redis: redis.Redis, schedule: Schedule
) -> None:
    lease(any_redis, schedule, [job(n) for n in range(1, 6)])
    for n in (4, 5):
        retry(any_redis, schedule, job(n), NOW)
    now = NOW + LEASE + 1

    first = schedule.take_due(now, 2)
    second = schedule.take_due(now, 2)
    third = schedule.take_due(now, 2)

    assert [j.entry_id for j in first.jobs] == ["1-0", "2-0"]
    assert [j.entry_id for j in second.jobs] == ["3-0", "4-0"]
    assert [j.entry_id for j in third.jobs] == ["5-0"]
    assert first.next_due == NOW  # entry 4 was due and still waits
    assert schedule.take_due(now, 2).jobs == []


def test_entries_whose_job_is_gone_are_dropped_not_taken(
    any_redis: redis.Redis, schedule: Schedule
) -> None:
    lease(any_redis, schedule, [job(1), job(2), job(3)])
    retry(any_redis, schedule, job(2), NOW)
    any_redis.hdel(keys.JOBS, "1-0", "2-0")  # finished by another delivery

    taken = schedule.take_due(NOW + LEASE + 1, 10)

    assert taken.jobs == [job(3, lost=1)]
    assert set(scores(any_redis, keys.LEASES)) == {"3-0"}
    assert scores(any_redis, keys.DUE) == {}
    assert any_redis.hget(keys.LOST, "1-0") is None


def test_next_due_is_none_when_nothing_waits(any_redis: redis.Redis, schedule: Schedule) -> None:
    taken = schedule.take_due(NOW, 10)

    assert (taken.jobs, taken.next_due) == ([], None)


def test_racing_callers_take_each_due_entry_exactly_once(
    any_redis: redis.Redis, schedule: Schedule
) -> None:
    expired, retried = [job(n) for n in range(1, 151)], [job(n) for n in range(151, 301)]
    lease(any_redis, schedule, expired + retried)
    for each in retried:
        retry(any_redis, schedule, each, NOW)
    now = NOW + LEASE + 1
    callers = [schedule, Schedule(any_redis, lease=LEASE)]
    taken: list[list[Job]] = [[], []]
    start = threading.Barrier(2)

    def drain(n: int) -> None:
        start.wait()
        while batch := callers[n].take_due(now, 7).jobs:
            taken[n].extend(batch)

    threads = [threading.Thread(target=drain, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    ids = Counter(j.entry_id for j in taken[0] + taken[1])
    assert ids == Counter(j.entry_id for j in expired + retried)
    lost: Any = any_redis.hgetall(keys.LOST)
    assert lost == {j.entry_id: "1" for j in expired}
    assert all(j.lost == 1 for j in taken[0] + taken[1] if j.entry_id in lost)
    assert len(scores(any_redis, keys.LEASES)) == 300


# --- retries and ends -------------------------------------------------------------------------


def test_a_retry_ends_the_lease_and_keeps_the_jobs_new_state(
    any_redis: redis.Redis, schedule: Schedule
) -> None:
    lease(any_redis, schedule, [job(1)])

    retry(any_redis, schedule, job(1, attempts=3, first_attempt_at=NOW - 9, waits=2), NOW + 7)

    assert scores(any_redis, keys.LEASES) == {}
    assert scores(any_redis, keys.DUE) == {"1-0": NOW + 7}
    assert schedule.take_due(NOW + 7, 10).jobs == [
        job(1, attempts=3, first_attempt_at=NOW - 9, waits=2)
    ]


def test_a_retry_does_not_bring_back_an_entry_whose_job_is_gone(
    any_redis: redis.Redis, schedule: Schedule
) -> None:
    lease(any_redis, schedule, [job(1)])
    finish(any_redis, "1-0")  # another delivery of the entry wrote its outcome

    retry(any_redis, schedule, job(1, attempts=1), NOW + 1)

    assert any_redis.hexists(keys.JOBS, "1-0") == 0
    assert scores(any_redis, keys.DUE) == {}
    assert scores(any_redis, keys.LEASES) == {}


def test_a_task_of_the_former_design_is_adopted_once_and_taken_as_due(
    any_redis: redis.Redis, schedule: Schedule
) -> None:
    former = job(1, attempts=2, first_attempt_at=NOW - 30)

    assert schedule.adopt(former, NOW) is True
    assert schedule.adopt(former, NOW) is False, "delivered twice, adopted once"

    assert schedule.take_due(NOW, 10).jobs == [former]


def test_a_task_of_the_former_design_whose_outcome_was_written_is_not_adopted(
    any_redis: redis.Redis, schedule: Schedule
) -> None:
    any_redis.set(f"{keys.LEGACY_ENTRY_DONE}:1-0", "1")

    assert schedule.adopt(job(1), NOW) is False

    assert any_redis.hlen(keys.JOBS) == 0
    assert scores(any_redis, keys.DUE) == {}


def test_retry_at_gives_entries_back_with_their_jobs_unchanged(
    any_redis: redis.Redis, schedule: Schedule
) -> None:
    lease(any_redis, schedule, [job(1, attempts=2), job(2)])
    finish(any_redis, "2-0")

    schedule.retry_at(["1-0", "2-0"], NOW + 2)

    assert scores(any_redis, keys.DUE) == {"1-0": NOW + 2}
    assert schedule.take_due(NOW + 2, 10).jobs == [job(1, attempts=2)]


def test_a_finished_entry_leaves_no_job_lease_or_loss_count(
    any_redis: redis.Redis, schedule: Schedule
) -> None:
    lease(any_redis, schedule, [job(1)])
    schedule.take_due(NOW + LEASE + 1, 10)  # one loss counted

    finish(any_redis, "1-0")

    assert any_redis.exists(keys.JOBS, keys.LEASES, keys.LOST) == 0
    assert schedule.take_due(NOW + 10 * LEASE, 10).jobs == []


def test_waiting_lists_the_next_due_entries_with_their_attempts(
    any_redis: redis.Redis, schedule: Schedule
) -> None:
    lease(any_redis, schedule, [job(n) for n in range(1, 6)])
    retry(any_redis, schedule, job(1, attempts=3), NOW + 30)
    retry(any_redis, schedule, job(2, attempts=1), NOW + 10)
    retry(any_redis, schedule, job(3), NOW + 20)

    leased, due, first = schedule.waiting(2)

    assert (leased, due) == (2, 3)
    assert first == [Waiting("2-0", NOW + 10, 1), Waiting("3-0", NOW + 20, 0)]


def test_waiting_on_an_empty_schedule(schedule: Schedule) -> None:
    assert schedule.waiting(5) == (0, 0, [])


def test_a_job_survives_the_task_message_and_the_jobs_hash_unchanged() -> None:
    full = Job("7-3", '{"id": "é"}', attempts=4, first_attempt_at=NOW, lost=2, waits=5)

    assert Job.from_wire(full.wire()) == full
    assert Job.restored("7-3", full.stored(), 2) == full
    assert Job.restored("7-3", Job("7-3", "{}").stored(), 0) == Job("7-3", "{}")


# --- the lease keeper -------------------------------------------------------------------------


def test_renewing_pushes_out_held_leases_and_owned_locks_only(
    any_redis: redis.Redis, schedule: Schedule, keeper: LeaseKeeper, clock: Clock
) -> None:
    lease(any_redis, schedule, [job(1), job(2), job(3)], clock())
    any_redis.set(lock_key(1), "mine", px=1000)
    any_redis.set(lock_key(2), "mine", px=1000)
    any_redis.set(lock_key(3), "another-task", px=1000)
    keeper.hold(["1-0", "2-0", "3-0"], [(lock_key(1), "mine"), (lock_key(2), "mine")])
    keeper.hold([], [(lock_key(3), "mine")])  # its lock ran out and went to another task
    keeper.release(["2-0"], [(lock_key(2), "mine")])
    retry(any_redis, schedule, job(3), clock() + 5)  # rescheduled: no longer leased
    clock.advance(30)

    keeper.renew_now()

    assert scores(any_redis, keys.LEASES) == {"1-0": clock() + LEASE, "2-0": NOW + LEASE}
    assert scores(any_redis, keys.DUE) == {"3-0": NOW + 5}
    assert 29_000 < any_redis.pttl(lock_key(1)) <= 30_000
    assert any_redis.pttl(lock_key(2)) <= 1000
    assert any_redis.pttl(lock_key(3)) <= 1000
    assert any_redis.get(lock_key(3)) == "another-task"


def test_an_entry_held_twice_is_renewed_until_both_let_go(
    any_redis: redis.Redis, schedule: Schedule, keeper: LeaseKeeper, clock: Clock
) -> None:
    lease(any_redis, schedule, [job(1)], clock())
    keeper.hold(["1-0"])
    keeper.hold(["1-0"])  # the same entry in a task delivered twice
    keeper.release(["1-0"])
    clock.advance(30)

    keeper.renew_now()
    assert scores(any_redis, keys.LEASES) == {"1-0": clock() + LEASE}

    keeper.release(["1-0"])
    clock.advance(30)
    keeper.renew_now()
    assert scores(any_redis, keys.LEASES) == {"1-0": clock() - 30 + LEASE}


def test_the_keeper_renews_by_itself_every_interval(
    any_redis: redis.Redis, schedule: Schedule, clock: Clock
) -> None:
    keeper = LeaseKeeper(schedule, interval=0.02, lock_ttl=30.0, clock=clock)
    lease(any_redis, schedule, [job(1)], clock())
    try:
        keeper.hold(["1-0"])
        clock.advance(30)
        deadline = time.monotonic() + 2
        while scores(any_redis, keys.LEASES)["1-0"] != clock() + LEASE:
            assert time.monotonic() < deadline, "the lease was not renewed"
            time.sleep(0.01)
    finally:
        keeper.close()


def test_the_keeper_outlives_a_failed_renewal_and_renews_once_redis_is_back(
    fake_redis: redis.Redis, clock: Clock
) -> None:
    schedule = Schedule(fake_redis, lease=LEASE)
    server = fake_redis.connection_pool.connection_kwargs["server"]
    keeper = LeaseKeeper(schedule, interval=0.02, lock_ttl=30.0, clock=clock)
    lease(fake_redis, schedule, [job(1)], clock())
    try:
        server.connected = False
        keeper.hold(["1-0"])
        time.sleep(0.06)  # renewals fail meanwhile
        server.connected = True
        clock.advance(30)
        deadline = time.monotonic() + 2
        while scores(fake_redis, keys.LEASES)["1-0"] != clock() + LEASE:
            assert time.monotonic() < deadline, "the lease was not renewed"
            time.sleep(0.01)
    finally:
        server.connected = True
        keeper.close()


def test_locks_to_free_later_are_freed_at_the_next_round_while_their_tokens_own_them(
    any_redis: redis.Redis, keeper: LeaseKeeper
) -> None:
    any_redis.set(lock_key(1), "mine", px=30_000)
    any_redis.set(lock_key(2), "another-task", px=30_000)  # ran out and was taken meanwhile
    keeper.free_later([(lock_key(1), "mine"), (lock_key(2), "mine")])

    keeper.renew_now()

    assert any_redis.get(lock_key(1)) is None
    assert any_redis.get(lock_key(2)) == "another-task"


def test_locks_to_free_outlive_a_failed_round_and_are_freed_once_redis_is_back(
    fake_redis: redis.Redis, clock: Clock
) -> None:
    server = fake_redis.connection_pool.connection_kwargs["server"]
    keeper = LeaseKeeper(
        Schedule(fake_redis, lease=LEASE), interval=3600.0, lock_ttl=30.0, clock=clock
    )
    fake_redis.set(lock_key(1), "mine", px=30_000)
    try:
        server.connected = False
        keeper.free_later([(lock_key(1), "mine")])
        with pytest.raises(redis.ConnectionError):
            keeper.renew_now()
        server.connected = True
        clock.advance(29)

        keeper.renew_now()

        assert fake_redis.get(lock_key(1)) is None
    finally:
        server.connected = True
        keeper.close()


def test_locks_to_free_are_forgotten_once_they_would_have_run_out(
    any_redis: redis.Redis, keeper: LeaseKeeper, clock: Clock
) -> None:
    keeper.free_later([(lock_key(1), "mine")])
    clock.advance(31)
    # Only to see that the keeper no longer tries: no lock outlives its time-to-live.
    any_redis.set(lock_key(1), "mine")

    keeper.renew_now()

    assert any_redis.get(lock_key(1)) == "mine"


def test_the_keeper_frees_locks_by_itself_at_once_without_waiting_out_its_interval(
    any_redis: redis.Redis, schedule: Schedule, clock: Clock
) -> None:
    keeper = LeaseKeeper(schedule, interval=3600.0, lock_ttl=30.0, clock=clock)
    any_redis.set(lock_key(1), "mine", px=30_000)
    try:
        keeper.hold([], [(lock_key(2), "mine")])  # its thread runs, waiting out the hour
        keeper.free_later([(lock_key(1), "mine")])
        deadline = time.monotonic() + 2
        while any_redis.exists(lock_key(1)):
            assert time.monotonic() < deadline, "the lock was not freed"
            time.sleep(0.01)
    finally:
        keeper.close()


def test_entries_given_back_later_are_due_at_the_next_round_unless_taken_or_finished(
    any_redis: redis.Redis, schedule: Schedule, keeper: LeaseKeeper, clock: Clock
) -> None:
    lease(any_redis, schedule, [job(1), job(2), job(3)], clock())
    keeper.hold(["1-0", "2-0", "3-0"])
    taken_by_another = NOW + LEASE + 1 + LEASE  # its lease ran out, then another worker took it
    any_redis.zadd(keys.LEASES, {"2-0": taken_by_another * 1000})
    finish(any_redis, "3-0")
    # Its thread may run a round between these two calls: the entries wait until released.
    keeper.give_back_later(["1-0", "2-0", "3-0"])
    keeper.release(["1-0", "2-0", "3-0"])

    keeper.renew_now()

    assert scores(any_redis, keys.DUE) == {"1-0": NOW}
    assert scores(any_redis, keys.LEASES) == {"2-0": taken_by_another}
    assert any_redis.hexists(keys.JOBS, "1-0")


def test_entries_to_give_back_outlive_a_failed_round_and_are_due_once_redis_is_back(
    fake_redis: redis.Redis, clock: Clock
) -> None:
    server = fake_redis.connection_pool.connection_kwargs["server"]
    schedule = Schedule(fake_redis, lease=LEASE)
    keeper = LeaseKeeper(schedule, interval=3600.0, lock_ttl=30.0, clock=clock)
    lease(fake_redis, schedule, [job(1)], clock())
    try:
        keeper.hold(["1-0"])
        server.connected = False
        keeper.give_back_later(["1-0"])
        keeper.release(["1-0"])
        with pytest.raises(redis.ConnectionError):
            keeper.renew_now()
        clock.advance(20)
        server.connected = True

        keeper.renew_now()

        assert scores(fake_redis, keys.DUE) == {"1-0": clock()}
        assert scores(fake_redis, keys.LEASES) == {}
    finally:
        server.connected = True
        keeper.close()


def test_an_entry_to_give_back_whose_lease_ran_out_is_left_to_intake(
    any_redis: redis.Redis, schedule: Schedule, keeper: LeaseKeeper, clock: Clock
) -> None:
    lease(any_redis, schedule, [job(1)], clock())
    keeper.hold(["1-0"])
    clock.advance(LEASE + 1)  # before its thread's first round
    keeper.give_back_later(["1-0"])
    keeper.release(["1-0"])

    keeper.renew_now()

    assert scores(any_redis, keys.DUE) == {}
    [taken] = schedule.take_due(clock(), 10).jobs
    assert taken.lost == 1  # taken as a lost delivery, as before the keeper knew of it


def test_an_entry_to_give_back_renewed_before_its_task_let_go_is_still_given_back(
    any_redis: redis.Redis, schedule: Schedule, keeper: LeaseKeeper, clock: Clock
) -> None:
    lease(any_redis, schedule, [job(1)], clock())
    keeper.hold(["1-0"])
    keeper.give_back_later(["1-0"])
    clock.advance(30)
    keeper.renew_now()  # a round between give_back_later and release renews the lease
    keeper.release(["1-0"])
    clock.advance(5)

    keeper.renew_now()

    assert scores(any_redis, keys.DUE) == {"1-0": clock()}
    assert scores(any_redis, keys.LEASES) == {}
