"""The events a run publishes and the outcomes it waits for, through one counted Redis client.

Every event is a valid update of a different case of the simulator's catalogue (a status and
one comment, no caseData, so it costs exactly one PUT). The harness counts its own commands and
round trips so that they can be taken out of the Redis figures of the side under test.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from bench.measure import RedisCounters, entry_ms, redis_counters

#: Cases 1..5000 exist in the simulator's default catalogue.
CASES = 5000
#: Events per pipelined XADD batch: small enough (about 10 KB) that the server reads each batch
#: in one go, so a batch is one round trip.
PUBLISH_CHUNK = 16
#: Seconds between two looks at the results stream's length while waiting.
POLL = 0.02


def event_json(run: str, number: int, case_id: int) -> str:
    """One valid event (contract §2) for ``case_id``, unique to this run."""
    return json.dumps(
        {
            "specversion": "1.0",
            "id": f"bench-{run}-{number}",
            "source": "urn:casesync:bench",
            "type": "thalamus.case.update",
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "subject": str(case_id),
            "datacontenttype": "application/json",
            "data": {
                "caseInstanceId": case_id,
                "categoryCode": "Reclamo",
                "typeCode": "Telefonico",
                "status": "Open",
                "resolution": "Resolved",
                "comments": [{"description": f"benchmark event {number}"}],
            },
        }
    )


def make_events(count: int, first_case: int = 1) -> list[str]:
    """``count`` events of distinct cases (cycling when there are more than the catalogue's)."""
    run = uuid.uuid4().hex[:8]
    return [
        event_json(run, number, (first_case - 1 + number) % CASES + 1) for number in range(count)
    ]


def request_id(event: str) -> str:
    return str(json.loads(event)["id"])


@dataclass
class Harness:
    """The benchmark's own Redis client, counting what it sends."""

    client: redis.Redis
    commands: int = 0
    requests: int = 0
    published: dict[str, int] = field(default_factory=dict)  # request id -> entry ms

    def counters(self) -> RedisCounters:
        """The server's counters, less the harness's own traffic so far (this call included)."""
        self.commands += 2
        self.requests += 2
        return redis_counters(self.client) - RedisCounters(self.commands, self.requests)

    def publish(self, stream: str, events: Sequence[str]) -> None:
        """Add the events in small pipelined batches; remembers each event's entry time."""
        for start in range(0, len(events), PUBLISH_CHUNK):
            chunk = events[start : start + PUBLISH_CHUNK]
            pipe = self.client.pipeline(transaction=False)
            for event in chunk:
                pipe.xadd(stream, {"event": event})
            ids = pipe.execute()
            self.commands += len(chunk)
            self.requests += 1
            for event, entry_id in zip(chunk, ids, strict=True):
                self.published[request_id(event)] = entry_ms(str(entry_id))

    def publish_paced(self, stream: str, events: Sequence[str], rate: float) -> None:
        """Add the events at ``rate`` per second, in ticks of 10 ms."""
        started = time.monotonic()
        sent = 0
        while sent < len(events):
            due = min(len(events), int((time.monotonic() - started) * rate) + 1)
            if due > sent:
                self.publish(stream, events[sent:due])
                sent = due
            time.sleep(0.01)

    def length(self, stream: str) -> int:
        self.commands += 1
        self.requests += 1
        return int(self.client.xlen(stream))

    def wait_for_length(self, stream: str, count: int, timeout: float) -> int:
        """Poll until ``stream`` holds ``count`` entries or ``timeout`` passed; its length."""
        deadline = time.monotonic() + timeout
        length = self.length(stream)
        while length < count and time.monotonic() < deadline:
            time.sleep(POLL)
            length = self.length(stream)
        return length

    def outcomes_after(self, stream: str, last_id: str) -> list[tuple[str, dict[str, Any]]]:
        """The outcome events after entry ``last_id``, with their entry ids."""
        self.commands += 1
        self.requests += 1
        reply: Any = self.client.xrange(stream, min=f"({last_id}" if last_id else "-")
        return [(str(entry_id), json.loads(fields["event"])) for entry_id, fields in reply]

    def last_id(self, stream: str) -> str:
        self.commands += 1
        self.requests += 1
        newest: Any = self.client.xrevrange(stream, count=1)
        return str(newest[0][0]) if newest else ""


@dataclass(frozen=True)
class Matched:
    """Publish-to-outcome latencies of the events of one window, and how they ended."""

    latencies_ms: list[float]
    first_publish_ms: int
    last_outcome_ms: int
    not_applied: int


def match_outcomes(
    published: dict[str, int], outcomes: list[tuple[str, dict[str, Any]]]
) -> Matched:
    """Pair each published event with its outcome by ``requestId``."""
    latencies: list[float] = []
    last = 0
    not_applied = 0
    for entry_id, outcome in outcomes:
        sent = published.get(str(outcome.get("data", {}).get("requestId")))
        if sent is None:
            continue
        latencies.append(float(entry_ms(entry_id) - sent))
        last = max(last, entry_ms(entry_id))
        not_applied += outcome.get("type") != "casesync.update.applied"
    first = min(published.values()) if published else 0
    return Matched(latencies, first, last, not_applied)
