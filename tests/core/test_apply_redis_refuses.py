"""The applier when Redis refuses writes (full, or read-only) between a PUT and the write of its
outcome: nothing is lost or dead-lettered, no attempt is spent, the comment is not sent twice,
and the event comes back as soon as Redis takes writes. On a real server made to refuse them."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import redis

from core.redis_faults import RefusalKind, refusal_of
from tests.core.conftest import MakeRig
from tests.core.test_apply import CASE, event
from tests.fake_thalamus import FakeThalamus
from tests.refusing_redis import RefusingRedis, refusing_redis


@pytest.fixture(scope="module")
def servers() -> Iterator[RefusingRedis]:
    with refusing_redis() as running:
        yield running


@pytest.fixture
def store(servers: RefusingRedis) -> Iterator[redis.Redis]:
    """The applier's Redis: the server the test makes refuse writes, emptied around the test."""
    servers.primary.flushdb()
    yield servers.primary
    servers.primary.flushdb()


@pytest.fixture
def thalamus(thalamus_fake: FakeThalamus) -> FakeThalamus:
    thalamus_fake.add_case(CASE)
    return thalamus_fake


FAULTS = {
    "full": (RefusingRedis.fill_memory, RefusingRedis.free_memory, RefusalKind.OUT_OF_MEMORY),
    "read-only": (
        RefusingRedis.promote_standby,
        RefusingRedis.promote_primary,
        RefusalKind.READ_ONLY,
    ),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_an_update_whose_outcome_redis_refuses_comes_back_once_it_takes_writes_and_is_not_resent(
    servers: RefusingRedis,
    make_rig: MakeRig,
    thalamus: FakeThalamus,
    caplog: pytest.LogCaptureFixture,
    fault: str,
) -> None:
    inject, clear, kind = FAULTS[fault]
    caplog.set_level(logging.INFO)

    class RefusesWritesAfterThePut:
        def before_call(self) -> None:
            pass

        def after_call(self, status: int | None, retry_after: float | None) -> None:
            if status == 201 and len(thalamus.sent("PUT")) == 1:
                inject(servers)

    rig = make_rig(client_options={"hooks": [RefusesWritesAfterThePut()]})
    [job] = rig.jobs(event(comments=[{"description": "only once"}]))

    try:
        with pytest.raises(redis.RedisError) as raised:
            rig.apply([job])
        refused = refusal_of(raised.value)
        assert refused is not None
        assert refused.kind == kind, "raised as the refusal it is, for the task to report"
        assert rig.outcomes() == []
        # Kept: still leased, or (a full Redis still takes a script whose first write frees
        # memory) already due again.
        assert job.entry_id in [*rig.leased(), *rig.due()]
    finally:
        clear(servers)

    rig.keeper.renew_now()  # the lease keeper's first round once Redis takes writes
    [again] = rig.take_due()  # at once, not a lease later
    assert (again.attempts, again.lost) == (0, 0), "nothing spent"
    rig.apply([again])

    assert rig.outcome_types() == [("e1", "applied")]
    assert rig.dead_letters() == []
    assert len(thalamus.sent("PUT")) == 1
    assert thalamus.comments(CASE).count("only once") == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [r for r in caplog.records if "waits for Redis" in r.getMessage()]
