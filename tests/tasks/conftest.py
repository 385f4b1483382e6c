"""Factories for the tests of the update task's plain code: a fake Thalamus, a clock, an applier."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis
from pydantic import SecretStr

from consumers.events import Limits
from tasks.apply import EventApplier
from tasks.guards import Guards
from tasks.outcomes import Streams
from tasks.retry_policy import RetryPolicy
from tests.fake_thalamus import FakeThalamus
from thalamus.client import ThalamusClient

TOKEN = "tok-3f9a-SECRET-never-logged"
STREAMS = Streams(
    results="casesync:results",
    dead_letter="casesync:dead-letter",
    results_max_length=1000,
    source="casesync",
)


class Clock:
    """A clock a test moves by hand."""

    # After the times of the tests' events (2026-11-28T10:15Z and 10:16Z), as a real clock would
    # be: an event from the future is refused (CASESYNC_MAX_CLOCK_SKEW).
    def __init__(self, now: float = 1_795_861_200.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def thalamus_fake() -> FakeThalamus:
    return FakeThalamus(token=TOKEN)


@pytest.fixture
def make_applier(
    fake_redis: redis.Redis, thalamus_fake: FakeThalamus, clock: Clock
) -> Iterator[Callable[..., EventApplier]]:
    """``make_applier(**overrides)``: an EventApplier over fakeredis and the fake Thalamus."""
    http = httpx.Client(base_url="http://thalamus.test", transport=thalamus_fake.transport)

    def make(**overrides: Any) -> EventApplier:
        options: dict[str, Any] = {
            "redis_client": fake_redis,
            "thalamus": ThalamusClient(
                http, touchpoint="casesync-tests", token=SecretStr(TOKEN), clock=clock
            ),
            "guards": Guards(fake_redis, lock_ttl=30.0, ledger_ttl=3600.0, done_ttl=3600),
            "streams": STREAMS,
            "policy": RetryPolicy(max_attempts=3, max_age=3600.0, base_delay=1.0, max_delay=60.0),
            "limits": Limits(),
            "max_deliveries": 3,
            "clock": clock,
        }
        options.update(overrides)
        return EventApplier(**options)

    yield make
    http.close()
