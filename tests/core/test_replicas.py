"""A batch's attempt marks reach the replica before any update goes out; without a replica the
batch goes on and the check rests."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import redis

from core.guards import BreakerOpen, EventKeys, Guards, lock_key
from core.replicas import FIRST_REST, LONGEST_REST, ReplicaWait
from ops import processes
from settings import keys as redis_keys
from tests.e2e.lag_proxy import lag_proxy

#: The replica runs this far behind, so only a WAIT makes it have the marks at once.
LAG = 0.3


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _take(guards: Guards, client: redis.Redis, event_id: str) -> EventKeys:
    ek = EventKeys.of("urn:test", event_id, f"{len(event_id)}-0")
    client.hset(redis_keys.JOBS, ek.entry_id, "{}")
    holds = guards.acquire([(7, [ek])], "token")
    assert not isinstance(holds, BreakerOpen)
    assert holds[0].held
    return ek


@pytest.fixture
def primary_and_replica(tmp_path: Path) -> Iterator[tuple[redis.Redis, redis.Redis]]:
    """A primary and a replica ``LAG`` seconds behind it."""
    primary_port, replica_port = processes.free_port(), processes.free_port()
    with ExitStack() as stack:
        stack.enter_context(
            processes.valkey_process(tmp_path / "p", primary_port, processes.primary_config())
        )
        proxy = stack.enter_context(lag_proxy(primary_port, LAG))
        config = processes.replica_config(proxy.port)
        stack.enter_context(processes.valkey_process(tmp_path / "r", replica_port, config))
        primary = redis.Redis(port=primary_port, decode_responses=True, socket_timeout=5)
        replica = redis.Redis(port=replica_port, decode_responses=True, socket_timeout=5)
        stack.callback(primary.close)
        stack.callback(replica.close)
        primary.set("synced", "1")
        assert primary.wait(1, 10_000) == 1
        yield primary, replica


@pytest.mark.slow
def test_the_replica_has_a_batchs_attempt_marks_before_the_batch_goes_on(
    primary_and_replica: tuple[redis.Redis, redis.Redis],
) -> None:
    primary, replica = primary_and_replica
    waiting = Guards(
        primary, lock_ttl=30, ledger_ttl=3600, replicas=ReplicaWait(1, timeout=LAG * 10)
    )
    not_waiting = Guards(primary, lock_ttl=30, ledger_ttl=3600, replicas=ReplicaWait(0, 1.0))

    confirmed = _take(waiting, primary, "waited")
    assert replica.exists(confirmed.mark), "on the replica as soon as the batch goes on"
    primary.delete(lock_key(7))
    unconfirmed = _take(not_waiting, primary, "not-waited")
    assert not replica.exists(unconfirmed.mark), "replication alone is late"


def test_without_a_replica_the_batch_goes_on_and_the_check_rests(
    any_redis: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    replicas = ReplicaWait(1, timeout=0.01, clock=clock)
    guards = Guards(any_redis, lock_ttl=30, ledger_ttl=3600, replicas=replicas)
    with caplog.at_level(logging.WARNING, logger="casesync.replicas"):
        ek = _take(guards, any_redis, "e1")
    assert any_redis.exists(ek.mark)
    assert "may lose them" in caplog.text
    assert not replicas.due()
    clock.now += FIRST_REST
    assert replicas.due()


def test_a_server_that_never_ran_the_script_still_takes_the_case_and_waits(
    any_redis: redis.Redis,
) -> None:
    any_redis.script_flush()
    replicas = ReplicaWait(1, timeout=0.01, clock=Clock())
    guards = Guards(any_redis, lock_ttl=30, ledger_ttl=3600, replicas=replicas)
    ek = _take(guards, any_redis, "e1")
    assert any_redis.exists(ek.mark)
    assert not replicas.due(), "the WAIT ran (unconfirmed: no replica)"


def test_the_rest_doubles_up_to_ten_minutes_and_ends_with_a_confirmation() -> None:
    clock = Clock()
    replicas = ReplicaWait(1, timeout=0.1, clock=clock)
    rests = []
    for _ in range(7):
        replicas.judge(0)
        replicas.judge(0)  # batches that waited at the same time rest once
        started = clock.now
        while not replicas.due():
            clock.now += 1
        rests.append(clock.now - started)
    assert rests == [30, 60, 120, 240, 480, LONGEST_REST, LONGEST_REST]
    assert replicas.judge(1) is True
    replicas.judge(redis.ResponseError("NOPERM"))
    assert not replicas.due()
    clock.now += FIRST_REST
    assert replicas.due(), "after a confirmation the rest starts again at 30 s"


def test_no_replicas_asked_means_no_wait() -> None:
    assert not ReplicaWait(0, timeout=0.1).due()


def test_a_run_of_unconfirmed_checks_warns_once_and_again_after_a_confirmation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    replicas = ReplicaWait(1, timeout=0.1, clock=clock)

    def check(confirmed: int) -> None:
        replicas.judge(confirmed)
        clock.now += LONGEST_REST

    with caplog.at_level(logging.INFO, logger="casesync.replicas"):
        for confirmed in (0, 0, 0, 1, 0):
            check(confirmed)

    levels = [record.levelname for record in caplog.records]
    assert levels == ["WARNING", "INFO", "INFO", "WARNING"]
    assert "CASESYNC_REDIS_WAIT_REPLICAS=0" in caplog.records[0].getMessage()
