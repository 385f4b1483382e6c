"""The applier when Redis goes away between a PUT and the write of its outcome, and how soon
the case is free again.

Only fakeredis lets a test cut the server's connection at that exact moment, so this module
runs on it alone (the other apply tests run on both servers).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from core.guards import Guards
from core.schedule import FREE_RETRY
from tests.core.conftest import LEASE, LEDGER_TTL, LOCK_TTL, Clock, MakeRig
from tests.core.test_apply import CASE, T1, assert_finished, event, methods
from tests.fake_thalamus import FakeThalamus


@pytest.fixture
def thalamus(thalamus_fake: FakeThalamus) -> FakeThalamus:
    thalamus_fake.add_case(CASE, caseData={"amount": 10.0, "priority": "low"})
    return thalamus_fake


def test_an_entry_cut_off_by_redis_comes_back_once_it_answers_and_is_not_resent(
    make_rig: MakeRig,
    thalamus: FakeThalamus,
    store: redis.Redis,
    fake_redis: redis.Redis,
    clock: Clock,
) -> None:
    server = fake_redis.connection_pool.connection_kwargs["server"]

    class RedisGoesAwayAfterThePut:
        def before_call(self) -> None:
            pass

        def after_call(self, status: int | None, retry_after: float | None) -> None:
            if status == 201 and not thalamus.sent("GET"):
                server.connected = False

    guards = Guards(store, lock_ttl=0.05, ledger_ttl=LEDGER_TTL)
    rig = make_rig(client_options={"hooks": [RedisGoesAwayAfterThePut()]}, guards=guards)
    [job] = rig.jobs(event(comments=[{"description": "only once"}]))

    with pytest.raises(redis.ConnectionError):
        rig.apply([job])
    server.connected = True

    assert rig.outcomes() == []
    time.sleep(0.1)  # the case lock runs out
    # Nothing could be given back while Redis was gone: the lease keeper does it at its first
    # round once Redis answers (its own thread may be first; this one makes sure).
    rig.keeper.renew_now()
    assert rig.leased() == []
    [again] = rig.take_due()  # at once, not a lease later
    assert again.lost == 0

    rig.apply([again])

    assert rig.outcome_types() == [("e1", "applied")]
    assert methods(thalamus) == ["PUT", "GET"]
    assert thalamus.comments(CASE) == ["only once"]
    assert_finished(rig, job)


def test_a_case_cut_off_by_redis_is_free_again_as_soon_as_redis_is_back(
    make_rig: MakeRig,
    thalamus: FakeThalamus,
    store: redis.Redis,
    fake_redis: redis.Redis,
    clock: Clock,
) -> None:
    """Its lock would hold the case for CASESYNC_CASE_LOCK_TTL (here LOCK_TTL, 30 s); the lease
    keeper frees it within about a second (FREE_RETRY) of Redis answering again, and the next
    change of the case goes through at once."""
    assert LOCK_TTL > 10 * (FREE_RETRY + 1), "the lock's own expiry would not be told apart"
    server = fake_redis.connection_pool.connection_kwargs["server"]

    class RedisGoesAwayAfterThePut:
        def before_call(self) -> None:
            pass

        def after_call(self, status: int | None, retry_after: float | None) -> None:
            if status == 201 and len(thalamus.sent("PUT")) == 1:
                server.connected = False

    rig = make_rig(client_options={"hooks": [RedisGoesAwayAfterThePut()]})
    [cut_off] = rig.jobs(event("e1", comments=[{"description": "first"}]))
    with pytest.raises(redis.ConnectionError):
        rig.apply([cut_off])

    server.connected = True
    back = time.monotonic()
    while rig.locks():
        assert time.monotonic() - back < FREE_RETRY + 1, "the case waits for its lock to run out"
        time.sleep(0.01)

    [newer] = rig.jobs(event("e2", time=T1, status="Resolved"))
    rig.apply([newer])
    assert rig.outcome_types() == [("e2", "applied")]

    # The cut-off update comes back (given back by the keeper, or when its lease runs out at
    # the latest), and is read back, not resent.
    clock.advance(LEASE + 1)
    rig.apply(rig.take_due())
    assert rig.outcome_types() == [("e2", "applied"), ("e1", "applied")]
    assert thalamus.comments(CASE) == ["first"]
    assert methods(thalamus) == ["PUT", "PUT", "GET"]
    assert_finished(rig, cut_off, newer)


def test_case_locks_taken_when_their_answer_was_lost_are_given_back_not_left_to_run_out(
    make_rig: MakeRig, thalamus: FakeThalamus, store: redis.Redis, clock: Clock
) -> None:
    class AnswerLost(Guards):
        def acquire(self, *args: Any, **kwargs: Any) -> Any:
            super().acquire(*args, **kwargs)  # the locks are taken in Redis...
            raise redis.ConnectionError("Connection reset by peer")  # ...the answer never comes

    rig = make_rig(guards=AnswerLost(store, lock_ttl=LOCK_TTL, ledger_ttl=LEDGER_TTL))
    [cut_off] = rig.jobs(event(comments=[{"description": "once"}]))

    with pytest.raises(redis.ConnectionError):
        rig.apply([cut_off])

    assert rig.locks() == []  # the case is free at once, not CASESYNC_CASE_LOCK_TTL later
    assert rig.leased() == []
    assert thalamus.sent("PUT") == []
