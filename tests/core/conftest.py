"""Factories for the tests of the batch applier's plain code: a fake Thalamus, a clock, and a
:class:`Rig` (an applier with its schedule, over fakeredis or the real server)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from pydantic import SecretStr

from core.apply import BatchApplier, BatchReport
from core.events import Limits
from core.guards import Guards
from core.outcomes import Streams
from core.retry_policy import RetryPolicy
from core.schedule import Job, LeaseKeeper, Schedule
from settings import keys
from tests.fake_thalamus import FakeThalamus
from thalamus.client import ThalamusClient, build_http_client

TOKEN = "tok-3f9a-SECRET-never-logged"
STREAMS = Streams(
    results="casesync:results",
    dead_letter="casesync:dead-letter",
    results_max_length=1000,
    source="casesync",
)
LEASE = 60.0
LOCK_TTL = 30.0
LEDGER_TTL = 3600.0
POLICY = RetryPolicy(
    max_attempts=3, max_age=3600.0, base_delay=1.0, max_delay=60.0, breaker_wait=4.5
)
MAX_DELIVERIES = 3

#: Apply tests marked with this run on fakeredis and on the real server (their Lua included).
on_both_servers = pytest.mark.parametrize("store", ["fakeredis", "valkey"], indirect=True)


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
def real_redis(redis_url: str) -> Iterator[redis.Redis]:
    """An empty database of the real server, emptied again after the test."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


@pytest.fixture
def store(request: pytest.FixtureRequest) -> redis.Redis:
    """The Redis the applier writes to: fakeredis, or each server under ``on_both_servers``."""
    name = "real_redis" if getattr(request, "param", "fakeredis") == "valkey" else "fake_redis"
    client: redis.Redis = request.getfixturevalue(name)
    return client


class Rig:
    """A BatchApplier over ``store`` with what a task has around it: the schedule that intake
    fills, a lease keeper, a thread pool, a fake Thalamus and a clock moved by hand."""

    def __init__(
        self,
        store: redis.Redis,
        applier: BatchApplier,
        schedule: Schedule,
        keeper: LeaseKeeper,
        executor: ThreadPoolExecutor,
        clock: Clock,
    ) -> None:
        self.store = store
        self.applier = applier
        self.schedule = schedule
        self.keeper = keeper
        self.executor = executor
        self.clock = clock
        self._entries = 0

    def jobs(self, *raws: str, **state: Any) -> list[Job]:
        """Jobs of ``raws`` with fresh stream entry ids in order, put in the schedule as intake
        leases them (one MULTI); ``state`` sets the jobs' retry state (attempts, lost, ...)."""
        made = []
        for raw in raws:
            self._entries += 1
            made.append(Job(f"1795860000000-{self._entries}", raw, **state))
        self.lease(made)
        return made

    def lease(self, jobs: Sequence[Job]) -> None:
        pipe = self.store.pipeline(transaction=True)
        self.schedule.add_leased(pipe, jobs, self.clock())
        pipe.execute()

    def apply(self, jobs: Sequence[Job]) -> BatchReport:
        return self.applier.apply(jobs)

    def take_due(self, most: int = 100) -> list[Job]:
        """What intake would hand on once the next entry falls due (moving the clock there):
        the jobs the schedule moves, in stream order."""
        taken = self.schedule.take_due(self.clock(), most)
        if not taken.jobs and taken.next_due is not None:
            self.clock.now = max(self.clock.now, taken.next_due)
            taken = self.schedule.take_due(self.clock(), most)
        return sorted(taken.jobs, key=lambda job: [int(n) for n in job.entry_id.split("-")])

    def run_to_end(self, jobs: Sequence[Job], most: int = 50) -> int:
        """Apply ``jobs``, then what the schedule hands on, until every job has its outcome;
        how many batches that took."""
        for batch in range(1, most + 1):
            self.apply(jobs)
            if not self.store.hlen(keys.JOBS):
                return batch
            jobs = self.take_due()
        raise AssertionError(f"jobs left after {most} batches: {self.store.hgetall(keys.JOBS)}")

    # What a user sees.

    def outcomes(self, stream: str = STREAMS.results) -> list[dict[str, Any]]:
        entries: Any = self.store.xrange(stream)
        return [json.loads(fields["event"]) for _, fields in entries]

    def outcome_types(self) -> list[tuple[str, str]]:
        """(requestId, type without its prefix) of each outcome event, in order."""
        return [
            (o["data"]["requestId"], o["type"].removeprefix("casesync.update."))
            for o in self.outcomes()
        ]

    def dead_letters(self) -> list[dict[str, str]]:
        entries: Any = self.store.xrange(STREAMS.dead_letter)
        return [fields for _, fields in entries]

    def due(self) -> dict[str, float]:
        """Entry id -> when it is due (epoch s), for every entry waiting in the schedule."""
        reply: Any = self.store.zrange(keys.DUE, 0, -1, withscores=True)
        return {entry_id: score / 1000 for entry_id, score in reply}

    def leased(self) -> list[str]:
        reply: Any = self.store.zrange(keys.LEASES, 0, -1)
        return list(reply)

    def stored(self, entry_id: str) -> Job | None:
        """The entry's job as the schedule keeps it; None once it is finished."""
        stored = self.store.hget(keys.JOBS, entry_id)
        lost = int(self.store.hget(keys.LOST, entry_id) or 0)
        return None if stored is None else Job.restored(entry_id, str(stored), lost)

    def locks(self) -> list[str]:
        reply: Any = self.store.keys(f"{keys.CASE_LOCK}:*")
        return list(reply)


MakeRig = Callable[..., Rig]


@pytest.fixture
def make_rig(store: redis.Redis, thalamus_fake: FakeThalamus, clock: Clock) -> Iterator[MakeRig]:
    """``make_rig(client_options=..., **applier_overrides)``: a Rig; every one made is shut
    down after the test (its thread pool, lease keeper and HTTP client)."""
    closing: list[Callable[[], Any]] = []

    def make(client_options: dict[str, Any] | None = None, **overrides: Any) -> Rig:
        http = build_http_client("http://thalamus.test", transport=thalamus_fake.transport)
        schedule = Schedule(store, lease=LEASE)
        # A long interval: a test renews by hand (renew_now) when it means to.
        keeper = LeaseKeeper(schedule, interval=3600.0, lock_ttl=LOCK_TTL, clock=clock)
        executor = ThreadPoolExecutor(4, thread_name_prefix="test-apply")
        closing.extend([http.close, keeper.close, executor.shutdown])
        client: dict[str, Any] = {
            "touchpoint": "casesync-tests",
            "token": SecretStr(TOKEN),
            "clock": clock,
        }
        options: dict[str, Any] = {
            "redis_client": store,
            "thalamus": ThalamusClient(http, **(client | (client_options or {}))),
            "guards": Guards(store, lock_ttl=LOCK_TTL, ledger_ttl=LEDGER_TTL),
            "schedule": schedule,
            "keeper": keeper,
            "executor": executor,
            "streams": STREAMS,
            "policy": POLICY,
            "limits": Limits(),
            "max_deliveries": MAX_DELIVERIES,
            "clock": clock,
        }
        options.update(overrides)
        return Rig(store, BatchApplier(**options), schedule, keeper, executor, clock)

    yield make
    for close in reversed(closing):
        close()


@pytest.fixture
def rig(make_rig: MakeRig) -> Rig:
    return make_rig()
