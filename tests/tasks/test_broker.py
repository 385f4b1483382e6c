"""The broker transport when Redis refuses writes: a worker records it and waits, never stops.

On kombu's own transport, the ``UNBLOCKED`` answer to a waiting ``BRPOP`` (Redis turned into a
replica under it) was raised into Celery's event loop, which stopped the worker as an
"Unrecoverable error". These tests drive the channel's calls one by one on a real server.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kombu.connection import Connection
from kombu.entity import Exchange, Queue

from core.redis_faults import RefusalKind
from tasks import runtime
from tasks.broker import Channel, Transport
from tests.refusing_redis import RefusingRedis, refusing_redis

QUEUE = "casesync-broker-test"


@pytest.fixture
def servers() -> Iterator[RefusingRedis]:
    with refusing_redis() as running:
        yield running


@pytest.fixture(autouse=True)
def fresh_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with a process that has seen no refusal."""
    monkeypatch.setattr(runtime, "_refusals", None)


@pytest.fixture
def channel(servers: RefusingRedis) -> Iterator[Channel]:
    """A channel consuming the test's queue, as a worker's is."""
    with Connection(servers.url, transport=Transport) as connection:
        chan = connection.default_channel
        queue = Queue(QUEUE, Exchange(QUEUE, type="direct"), routing_key=QUEUE)
        queue(chan).declare()
        chan.basic_consume(QUEUE, False, lambda message: None, "test-consumer")
        # The connection BRPOP goes over, as the event loop's poller gives it one.
        chan.client.connection = chan.client.connection_pool.get_connection()
        yield chan


def test_a_waiting_brpop_cut_off_by_a_fail_over_is_recorded_not_raised(
    servers: RefusingRedis, channel: Channel
) -> None:
    channel._brpop_start(timeout=10)
    servers.promote_standby()
    try:
        assert channel._brpop_read() is False
        refusal = runtime.write_refusals().current()
        assert refusal is not None
        assert refusal.kind == RefusalKind.UNBLOCKED
    finally:
        servers.promote_primary()


def test_no_task_is_taken_while_writes_are_refused_and_taking_resumes_after(
    servers: RefusingRedis, channel: Channel
) -> None:
    servers.fill_memory()
    try:
        assert runtime.write_refusals().writable(servers.primary, "intake") is True
        runtime.write_refusals().report(_refused_set(servers), "intake")
        channel._brpop_start(timeout=1)
        assert not channel._in_poll, "no BRPOP sent"
    finally:
        servers.free_memory()
    assert runtime.write_refusals().writable(servers.primary, "intake")
    channel._brpop_start(timeout=1)
    assert channel._in_poll, "a BRPOP is out again"


def test_kombus_own_writes_are_skipped_while_refused(
    servers: RefusingRedis, channel: Channel
) -> None:
    servers.promote_standby()
    try:
        # At a reconnection, kombu writes its queue's binding again: it is there already.
        channel._queue_bind(QUEUE, QUEUE, "", QUEUE)
        channel.qos.restore_visible()
        refusal = runtime.write_refusals().current()
        assert refusal is not None
        assert refusal.kind == RefusalKind.READ_ONLY
        channel.maybe_refresh_binding_expiry()
    finally:
        servers.promote_primary()


def _refused_set(servers: RefusingRedis) -> Exception:
    try:
        servers.primary.set("k", "v")
    except Exception as exc:
        return exc
    raise AssertionError("the write went through")
