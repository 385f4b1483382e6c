"""Writing outcomes: the results stream is the record, the copy on ``replyto`` is best-effort.

On fakeredis and a real server (``any_redis``): a reply key that is not a stream must never undo,
hold up or retry the outcome.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY
from redis.backoff import NoBackoff
from redis.retry import Retry

from core import outcomes
from core.outcomes import Outcome
from ops.processes import free_port
from tests.core.conftest import STREAMS

NOW = 1_795_861_200.0
SECRET_COMMENT = "customer's card ends 4242"

#: A key of each type but stream, as another team (or Celery) might hold under the name.
NOT_A_STREAM: dict[str, Callable[[redis.Redis, str], Any]] = {
    "hash": lambda client, key: client.hset(key, "field", "value"),
    "list": lambda client, key: client.rpush(key, "message"),
    "set": lambda client, key: client.sadd(key, "member"),
    "string": lambda client, key: client.set(key, "value"),
}


def applied(replyto: str | None, event_id: str = "e1") -> Outcome:
    return Outcome(
        type=outcomes.APPLIED,
        request_id=event_id,
        request_source="urn:example:billing",
        case_id=12345,
        attempts=1,
        replyto=replyto,
        http_status=201,
        case={"id": 12345, "comments": [{"description": SECRET_COMMENT}]},
    )


def write(client: redis.Redis, *written: Outcome) -> int:
    """Write outcomes as a worker does: the MULTI, then the replies; the replies that failed."""
    pipe = client.pipeline(transaction=True)
    replies = [reply for o in written for reply in outcomes.add_outcome(pipe, STREAMS, o, NOW)]
    pipe.execute()
    return outcomes.send_replies(client, STREAMS, replies)


def stream(client: redis.Redis, name: str) -> list[dict[str, Any]]:
    entries: Any = client.xrange(name)
    return [json.loads(fields["event"]) for _, fields in entries]


def reply_failures() -> float:
    return REGISTRY.get_sample_value("casesync_reply_failures_total") or 0.0


def test_the_outcome_reaches_the_results_stream_and_the_replyto_stream(
    any_redis: redis.Redis,
) -> None:
    assert write(any_redis, applied("billing:case-results")) == 0

    [outcome] = stream(any_redis, STREAMS.results)
    assert stream(any_redis, "billing:case-results") == [outcome]


@pytest.mark.parametrize("kind", sorted(NOT_A_STREAM))
def test_a_replyto_key_that_is_not_a_stream_never_blocks_the_outcome(
    any_redis: redis.Redis, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    NOT_A_STREAM[kind](any_redis, "billing:case-results")
    before = reply_failures()

    with caplog.at_level(logging.WARNING, logger="casesync.outcomes"):
        failed = write(any_redis, applied("billing:case-results"))

    assert failed == 1
    [outcome] = stream(any_redis, STREAMS.results)
    assert outcome["data"]["requestId"] == "e1"
    assert any_redis.type("billing:case-results") == kind, "the key is left as it was"
    assert reply_failures() == before + 1
    [record] = caplog.records
    assert "urn:example:billing/e1" in record.getMessage()
    assert "'billing:case-results'" in record.getMessage()
    assert SECRET_COMMENT not in caplog.text, "no event content in the log"


def test_one_bad_reply_key_does_not_keep_the_others_from_their_replies(
    any_redis: redis.Redis,
) -> None:
    any_redis.rpush("team:results", "a list")

    failed = write(
        any_redis,
        applied("billing:case-results", "e1"),
        applied("team:results", "e2"),
        applied(None, "e3"),
        applied("ops:results", "e4"),
    )

    assert failed == 1
    assert [o["data"]["requestId"] for o in stream(any_redis, STREAMS.results)] == [
        "e1",
        "e2",
        "e3",
        "e4",
    ]
    assert [o["data"]["requestId"] for o in stream(any_redis, "billing:case-results")] == ["e1"]
    assert [o["data"]["requestId"] for o in stream(any_redis, "ops:results")] == ["e4"]


def test_a_dead_letters_reply_that_fails_leaves_the_dead_letter_and_its_outcome(
    any_redis: redis.Redis,
) -> None:
    any_redis.hset("billing:case-results", "field", "value")
    outcome = Outcome(
        type=outcomes.DEADLETTERED,
        request_id="e1",
        request_source="urn:example:billing",
        case_id=12345,
        attempts=1,
        replyto="billing:case-results",
        reason="InvalidCode",
    )
    pipe = any_redis.pipeline(transaction=True)
    record = outcomes.DeadLetterRecord('{"id": "e1"}', NOW, "1-0")
    replies = outcomes.add_dead_letter(pipe, STREAMS, outcome, record, NOW)
    pipe.execute()

    assert outcomes.send_replies(any_redis, STREAMS, replies) == 1
    assert any_redis.xlen(STREAMS.dead_letter) == 1
    assert stream(any_redis, STREAMS.results)[0]["data"]["reason"] == "InvalidCode"


def test_replies_that_cannot_reach_redis_are_counted_not_raised() -> None:
    unreachable = redis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0))
    reply = outcomes.Reply("billing:case-results", "{}", "urn:example:billing", "e1")
    before = reply_failures()

    assert outcomes.send_replies(unreachable, STREAMS, [reply, reply]) == 2
    assert reply_failures() == before + 2
    unreachable.close()
