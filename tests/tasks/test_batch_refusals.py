"""The batch task when Redis refuses writes: it ends as ``WaitingForRedis`` (no traceback, no
dead letter, no attempt spent), and its events are due again as soon as Redis takes writes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from core.schedule import Job, Schedule
from settings import Settings, keys
from tasks import runtime
from tasks.batch import WaitingForRedis, apply_batch
from tests.conftest import DEAD_LETTER, case_event
from tests.refusing_redis import RefusingRedis, refusing_redis, wait_until


@pytest.fixture
def servers() -> Iterator[RefusingRedis]:
    with refusing_redis() as running:
        yield running


@pytest.fixture
def task(servers: RefusingRedis, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """What the task function is handed: its app, with settings for this server; the process's
    runtime is built for the test and closed after it."""
    monkeypatch.setattr(runtime, "_current", None)
    monkeypatch.setattr(runtime, "_refusals", None)
    # Nothing listens on port 9: no Thalamus call may be made before Redis takes the locks.
    settings = Settings(redis_url=servers.url, thalamus_url="http://127.0.0.1:9")
    yield SimpleNamespace(app=SimpleNamespace(settings=settings))
    runtime.close_runtime()


@pytest.mark.parametrize(
    ("fault", "clear", "code"),
    [
        (RefusingRedis.fill_memory, RefusingRedis.free_memory, "OOM"),
        (RefusingRedis.promote_standby, RefusingRedis.promote_primary, "READONLY"),
    ],
    ids=["full", "read-only"],
)
def test_a_batch_cut_off_by_refused_writes_waits_for_redis_and_comes_back_due(
    servers: RefusingRedis, task: Any, fault: Any, clear: Any, code: str
) -> None:
    client = servers.primary
    job = Job("1795860000000-1", _event())
    pipe = client.pipeline(transaction=True)
    Schedule(client, lease=60).add_leased(pipe, [job], time.time())
    pipe.execute()

    fault(servers)
    try:
        with pytest.raises(WaitingForRedis) as raised:
            apply_batch(task, [job.wire()])
    finally:
        clear(servers)

    assert str(raised.value).startswith(f"1 events wait for Redis to take writes again: {code}")
    assert client.xlen(DEAD_LETTER) == 0
    # The lease keeper gives the entry back at its first round that reaches Redis, not a lease
    # (60 s) later, its attempts unspent.
    wait_until(lambda: client.zscore(keys.DUE, job.entry_id) is not None, 5)
    stored = Job.restored(job.entry_id, str(client.hget(keys.JOBS, job.entry_id)), 0)
    assert stored.attempts == 0


def _event() -> str:
    return json.dumps(case_event("e1", 12345, comments=[{"description": "once"}]))
