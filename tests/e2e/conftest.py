"""End-to-end fixtures: a real Redis-compatible server, the simulator over HTTP, real workers.

Each test starts from an empty Redis database and a reset simulator; every worker a test starts
is stopped when the test ends, and its log is shown when the test fails.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from cli.publish_cmd import publish
from ops import processes
from tests.conftest import DEAD_LETTER, EVENTS, RESULTS
from thalamus.simulator.config import DEFAULT_TOUCHPOINT
from thalamus.simulator.process import RunningSimulator, running_simulator

#: Quick retries and a short visibility time-out, so fault tests take seconds.
FAST_SETTINGS = {
    "CASESYNC_RETRY_BASE_DELAY": "0.1",
    "CASESYNC_RETRY_MAX_DELAY": "3",
    "CASESYNC_VISIBILITY_TIMEOUT": "10",
    "CASESYNC_REDIS_TIMEOUT": "5",
    "CASESYNC_MAX_ATTEMPTS": "4",
    "CASESYNC_CLAIM_IDLE": "2",
    "CASESYNC_BREAKER_PROBE_INTERVAL": "0.5",
    # A lock left by an update cut off mid-way (Redis restarted under it) frees its case soon;
    # it still outlasts any call, whose read time-out is shorter.
    "CASESYNC_CASE_LOCK_TTL": "5",
    "CASESYNC_READ_TIMEOUT": "4",
    "CASESYNC_CONCURRENCY": "16",
    "CASESYNC_LOG_LEVEL": "INFO",
}


#: Celery options of a test worker: no waiting for neighbours at start. ``casesync worker``
#: itself runs without them (mingle and gossip on).
QUICK_START = ("--without-mingle", "--without-gossip")

#: A token no other string could be mistaken for, so a test can look for it in logs and streams.
TOKEN = f"tok-{secrets.token_hex(12)}"


@pytest.fixture(scope="session")
def simulator() -> Iterator[RunningSimulator]:
    with running_simulator("--token", TOKEN) as running:
        yield running


@dataclass
class Pipeline:
    """The system under test as a user sees it: streams in and out, the simulator's record."""

    redis: redis.Redis
    redis_url: str
    simulator: RunningSimulator
    logs: Path
    stack: ExitStack
    workers: list[Any] = field(default_factory=list)

    def env(self, **overrides: str) -> dict[str, str]:
        return {
            **FAST_SETTINGS,
            "CASESYNC_REDIS_URL": self.redis_url,
            "CASESYNC_THALAMUS_URL": self.simulator.url,
            "CASESYNC_THALAMUS_TOUCHPOINT": DEFAULT_TOUCHPOINT,
            "CASESYNC_THALAMUS_TOKEN": TOKEN,
            **overrides,
        }

    def start_worker(self, *, celery_options: Sequence[str] = QUICK_START, **overrides: str) -> Any:
        log = (self.logs / f"worker-{len(self.workers)}.log").open("wb")
        self.stack.callback(log.close)
        argv = processes.worker_command(*celery_options)
        process = processes.start_process(argv, self.env(**overrides), log)
        self.stack.callback(processes.stop_process, process)
        self.workers.append(process)
        return process

    def publish(self, *events: dict[str, Any] | str) -> list[str]:
        lines = [e if isinstance(e, str) else json.dumps(e) for e in events]
        return publish(self.redis, EVENTS, lines)

    def outcomes(self) -> list[dict[str, Any]]:
        return [json.loads(fields["event"]) for _, fields in self.redis.xrange(RESULTS)]

    def dead_letters(self) -> list[dict[str, str]]:
        entries: Any = self.redis.xrange(DEAD_LETTER)
        return [dict(fields) for _, fields in entries]

    def wait_for_outcomes(self, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """The outcome events once there are ``count`` of them; fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.outcomes()
            if len(found) >= count:
                return found
            time.sleep(0.1)
        found = self.outcomes()
        raise AssertionError(f"{len(found)} outcomes after {timeout} s, expected {count}")

    def wait_until(self, check: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.1)
        raise AssertionError(f"condition not met within {timeout} s")

    def case(self, case_id: int) -> dict[str, Any]:
        """A case as the simulator holds it, every comment included."""
        found: dict[str, Any] = self.simulator.admin.case(case_id)["case"]
        return found

    def worker_logs(self) -> str:
        return "\n".join(
            path.read_text(encoding="utf-8", errors="replace")
            for path in sorted(self.logs.glob("worker-*.log"))
        )


@pytest.fixture
def pipeline(
    redis_url: str, simulator: RunningSimulator, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Pipeline]:
    client = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=10)
    client.flushdb()
    simulator.admin.reset()
    with ExitStack() as stack:
        running = Pipeline(client, redis_url, simulator, tmp_path, stack)
        yield running
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            print(running.worker_logs()[-20000:])
    client.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
