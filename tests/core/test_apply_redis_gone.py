"""The applier when Redis goes away between a PUT and the write of its outcome.

Only fakeredis lets a test cut the server's connection at that exact moment, so this module
runs on it alone (the other apply tests run on both servers).
"""

from __future__ import annotations

import time

import pytest
import redis

from core.guards import Guards
from tests.core.conftest import LEASE, LEDGER_TTL, Clock, MakeRig
from tests.core.test_apply import CASE, assert_finished, event, methods
from tests.fake_thalamus import FakeThalamus


@pytest.fixture
def thalamus(thalamus_fake: FakeThalamus) -> FakeThalamus:
    thalamus_fake.add_case(CASE, caseData={"amount": 10.0, "priority": "low"})
    return thalamus_fake


def test_when_redis_is_gone_while_outcomes_are_written_the_entry_comes_back_and_is_not_resent(
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
    assert rig.leased() == [job.entry_id]  # nothing could be given back: the lease runs out
    time.sleep(0.1)  # and so does the case lock
    clock.advance(LEASE + 1)
    [again] = rig.take_due()
    assert again.lost == 1

    rig.apply([again])

    assert rig.outcome_types() == [("e1", "applied")]
    assert methods(thalamus) == ["PUT", "GET"]
    assert thalamus.comments(CASE) == ["only once"]
    assert_finished(rig, job)
