"""Which Redis errors are refusals to write, and what a worker's log says about them.

The classifier is a table over errors as redis-py and kombu raise them, and over the errors a real
server answers when it is full or read-only; the record of refusals runs on a clock moved by hand.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import redis
from kombu.exceptions import OperationalError
from redis.exceptions import NoPermissionError

from core.redis_faults import Refusal, RefusalKind, WriteRefusals, probe_writes, refusal_of
from tests.core.conftest import Clock
from tests.refusing_redis import RefusingRedis, refusing_redis

OOM_TEXT = "command not allowed when used memory > 'maxmemory'."
READONLY_TEXT = "You can't write against a read only replica."


def _raised_from(cause: Exception) -> OperationalError:
    """kombu's way of passing on a Redis error: its own class, raised from the original."""
    try:
        raise OperationalError(str(cause)) from cause
    except OperationalError as wrapped:
        return wrapped


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (redis.OutOfMemoryError(OOM_TEXT), RefusalKind.OUT_OF_MEMORY),
        (redis.ReadOnlyError(READONLY_TEXT), RefusalKind.READ_ONLY),
        # In a MULTI, redis-py names the command; in a script, the server names the script.
        (
            redis.OutOfMemoryError(f"Command # 4 (XADD casesync:results) caused error: {OOM_TEXT}"),
            RefusalKind.OUT_OF_MEMORY,
        ),
        (
            redis.ResponseError(f"{READONLY_TEXT} script: on @user_script:14."),
            RefusalKind.READ_ONLY,
        ),
        (
            redis.ResponseError(
                "UNBLOCKED force unblock from blocking operation, instance state changed "
                "(master -> replica?)"
            ),
            RefusalKind.UNBLOCKED,
        ),
        (
            redis.ResponseError(
                "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to "
                "persist to disk."
            ),
            RefusalKind.NOT_PERSISTING,
        ),
        (
            redis.ResponseError("NOREPLICAS Not enough good replicas to write."),
            RefusalKind.NO_REPLICAS,
        ),
        (_raised_from(redis.OutOfMemoryError(OOM_TEXT)), RefusalKind.OUT_OF_MEMORY),
        (_raised_from(redis.ReadOnlyError(READONLY_TEXT)), RefusalKind.READ_ONLY),
    ],
)
def test_each_way_redis_refuses_writes_is_one_kind_of_refusal(
    error: Exception, kind: RefusalKind
) -> None:
    refusal = refusal_of(error)
    assert refusal is not None
    assert refusal.kind == kind
    assert refusal.reason.startswith(f"{kind.value}: ")


@pytest.mark.parametrize(
    "error",
    [
        redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
        redis.TimeoutError("Timeout reading from socket"),
        redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        NoPermissionError("this user has no permissions to run the 'set' command"),
        redis.BusyLoadingError("Redis is loading the dataset in memory"),
        # Words of a refusal in something that is not a Redis error say nothing.
        ValueError(OOM_TEXT),
        OperationalError("broker unreachable"),
    ],
)
def test_other_errors_are_not_refusals(error: Exception) -> None:
    assert refusal_of(error) is None


def test_the_reason_says_what_it_means_what_to_do_and_what_redis_said() -> None:
    refusal = refusal_of(redis.OutOfMemoryError(OOM_TEXT))
    assert refusal is not None
    assert "maxmemory" in refusal.reason
    assert "noeviction" in refusal.reason
    assert OOM_TEXT in refusal.reason


@pytest.fixture(scope="module")
def servers() -> Iterator[RefusingRedis]:
    with refusing_redis() as running:
        yield running


def _refused_writes(client: redis.Redis) -> list[RefusalKind | None]:
    """How a plain write, a script that writes and a MULTI fare, each classified."""
    kinds: list[RefusalKind | None] = []
    pipe = client.pipeline(transaction=True)
    pipe.hset("h", "a", "1")
    pipe.xadd("s", {"f": "v"})
    attempts = [
        lambda: client.set("k", "v"),
        lambda: client.eval("return redis.call('SET', KEYS[1], 'v')", 1, "k"),
        pipe.execute,
    ]
    for attempt in attempts:
        with pytest.raises(redis.RedisError) as raised:
            attempt()
        found = refusal_of(raised.value)
        kinds.append(None if found is None else found.kind)
    return kinds


def test_a_full_server_refuses_writes_as_out_of_memory(servers: RefusingRedis) -> None:
    servers.fill_memory()
    try:
        assert _refused_writes(servers.primary) == [RefusalKind.OUT_OF_MEMORY] * 3
        probed = probe_writes(servers.primary)
        assert probed is not None
        assert probed.kind == RefusalKind.OUT_OF_MEMORY
    finally:
        servers.free_memory()
    assert probe_writes(servers.primary) is None


def test_a_server_turned_replica_refuses_writes_as_read_only(servers: RefusingRedis) -> None:
    servers.primary.set("kept", "yes")
    servers.promote_standby()
    try:
        assert _refused_writes(servers.primary) == [RefusalKind.READ_ONLY] * 3
        probed = probe_writes(servers.primary)
        assert probed is not None
        assert probed.kind == RefusalKind.READ_ONLY
    finally:
        servers.promote_primary()
        servers.follow_primary()
    assert probe_writes(servers.primary) is None
    assert servers.primary.get("kept") == "yes"


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    lines = [record.getMessage() for record in caplog.records if record.name == "casesync.redis"]
    caplog.clear()
    return lines


def _refusal(error: Exception) -> Refusal:
    found = refusal_of(error)
    assert found is not None
    return found


OOM = _refusal(redis.OutOfMemoryError(OOM_TEXT))
READ_ONLY = _refusal(redis.ReadOnlyError(READONLY_TEXT))


def test_refusals_are_logged_once_then_once_a_minute_then_their_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="casesync.redis")
    clock = Clock(0.0)
    refusals = WriteRefusals(clock=clock, remind_every=60.0)

    refusals.refused(OOM, "intake")
    [first] = _lines(caplog)
    assert "Redis refuses writes (first seen by intake): OOM: " in first
    assert "resumes by itself" in first

    for _ in range(100):  # every part of every task, for most of a minute
        clock.advance(0.5)
        refusals.refused(OOM, "an update")
    assert _lines(caplog) == []
    clock.advance(10)
    refusals.refused(OOM, "an update")
    [reminder] = _lines(caplog)
    assert reminder.startswith("Redis still refuses writes after 60 s (102 refusals so far): OOM")

    clock.advance(2)
    refusals.accepted()
    assert _lines(caplog) == [
        "Redis accepts writes again after 62.0 s of refusals (102 refused); resuming"
    ]
    assert refusals.current() is None
    refusals.accepted()
    assert _lines(caplog) == [], "nothing to say while Redis takes writes"


def test_the_latest_refusal_is_the_current_one() -> None:
    refusals = WriteRefusals(clock=Clock(0.0))
    assert refusals.current() is None
    refusals.refused(OOM, "intake")
    refusals.refused(READ_ONLY, "intake")
    assert refusals.current() == READ_ONLY


def test_report_records_refusals_and_leaves_other_errors_to_the_caller() -> None:
    refusals = WriteRefusals(clock=Clock(0.0))
    assert not refusals.report(redis.ConnectionError("gone"), "intake")
    assert refusals.current() is None
    assert refusals.report(_raised_from(redis.ReadOnlyError(READONLY_TEXT)), "the broker")
    current = refusals.current()
    assert current is not None
    assert current.kind == RefusalKind.READ_ONLY


def test_only_a_write_probe_ends_refusals(
    servers: RefusingRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="casesync.redis")
    refusals = WriteRefusals(clock=Clock(0.0))
    assert refusals.writable(servers.primary, "intake"), "no probe while nothing was refused"
    refusals.refused(OOM, "intake")
    servers.fill_memory()
    try:
        assert not refusals.writable(servers.primary, "intake")
        assert refusals.current() is not None
    finally:
        servers.free_memory()
    assert refusals.writable(servers.primary, "intake")
    assert refusals.current() is None
    assert _lines(caplog)[-1].startswith("Redis accepts writes again")
