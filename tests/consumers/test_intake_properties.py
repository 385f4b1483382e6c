"""Properties: whatever an upstream service adds to the stream ends, at intake, in exactly one of
a dead letter or a job leased and handed on; nothing it adds crashes intake; and a handed-on batch
run through the applier ends each of its events in exactly one outcome."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import fakeredis
import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumers.intake import Intake, IntakeConfig
from core.apply import BatchApplier
from core.events import EVENT_FIELD
from core.guards import Guards
from core.outcomes import Streams
from core.retry_policy import RetryPolicy
from core.schedule import Job, LeaseKeeper, Schedule
from settings import keys
from tests.conftest import case_event
from tests.fake_thalamus import FakeThalamus
from thalamus.client import ThalamusClient

STREAMS = Streams("results", "dead-letter", 10_000, "casesync")
NOW = 1_800_000_000.0

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)


@st.composite
def mutated_events(draw: st.DrawFn) -> str:
    """A valid event with a few keys removed, replaced or added, anywhere in it."""
    event = case_event(
        "e1", 7, status="Open", comments=[{"description": "hi"}], caseData={"amount": 1.5}
    )
    for _ in range(draw(st.integers(0, 3))):
        data = event.get("data")
        target = data if isinstance(data, dict) and draw(st.booleans()) else event
        key = draw(st.sampled_from([*target.keys(), "extra"]))
        action = draw(st.sampled_from(["drop", "replace"]))
        if action == "drop":
            target.pop(key, None)
        else:
            target[key] = draw(json_values)
    return json.dumps(event)


def numbered(events: list[str]) -> list[str]:
    """Distinct event ids, so each entry is its own event (where the id survived as a key)."""
    return [
        json.dumps({**json.loads(e), "id": f"e{n}"}) if isinstance(json.loads(e), dict) else e
        for n, e in enumerate(events)
    ]


class Taken:
    """An intake over a fresh fakeredis after one poll: what it dead-lettered, what it sent."""

    def __init__(self, entries: list[dict[str, str | bytes]]) -> None:
        self.client = fakeredis.FakeRedis(decode_responses=True, encoding_errors="surrogateescape")
        self.config = IntakeConfig(stream="events", group="g", consumer="c", queue="q")
        self.schedule = Schedule(self.client, lease=60)
        self.batches: list[list[Job]] = []
        intake = Intake(
            self.client,
            self.config,
            STREAMS,
            self.schedule,
            lambda jobs: self.batches.append(list(jobs)),
            clock=lambda: NOW,
        )
        intake.ensure_group()
        self.entry_ids = [str(self.client.xadd("events", fields)) for fields in entries]  # type: ignore[arg-type]
        intake.poll()

    def handed_on(self) -> list[str]:
        return [job.entry_id for batch in self.batches for job in batch]

    def dead_lettered(self) -> list[str]:
        letters: Any = self.client.xrange("dead-letter")
        return [letter["entryId"] for _, letter in letters]

    def raw_dead_letters(self) -> list[bytes]:
        raw = fakeredis.FakeRedis(server=self.client.connection_pool.connection_kwargs["server"])
        letters: Any = raw.xrange("dead-letter")
        return [letter[b"event"] for _, letter in letters]

    def assert_each_entry_ends_in_exactly_one_way(self) -> None:
        handed_on, dead = self.handed_on(), self.dead_lettered()
        assert len(self.batches) <= 1, "one read, one batch"
        assert sorted(handed_on + dead) == sorted(self.entry_ids), "each entry exactly once"
        assert not set(handed_on) & set(dead)
        leases: Any = self.client.zrange(keys.LEASES, 0, -1)
        assert sorted(leases) == sorted(handed_on), "what is handed on is leased, nothing else"
        assert sorted(self.client.hkeys(keys.JOBS)) == sorted(handed_on)
        assert self.client.xlen("results") == len(dead), "a dead letter's outcome, nothing else"
        assert self.client.xpending("events", "g")["pending"] == 0


PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=5))
def test_any_bytes_end_in_a_dead_letter_or_a_leased_job_handed_on(payloads: list[bytes]) -> None:
    taken = Taken([{EVENT_FIELD: payload} for payload in payloads])

    taken.assert_each_entry_ends_in_exactly_one_way()
    for raw in taken.raw_dead_letters():
        assert raw in payloads, "a dead letter keeps the bytes as they came"


@PROPERTY
@given(st.lists(mutated_events(), min_size=1, max_size=4))
def test_any_mutation_of_a_valid_event_ends_in_a_dead_letter_or_a_leased_job_handed_on(
    events: list[str],
) -> None:
    events = numbered(events)
    taken = Taken([{EVENT_FIELD: event} for event in events])

    taken.assert_each_entry_ends_in_exactly_one_way()
    for job in (job for batch in taken.batches for job in batch):
        assert job.raw_event == events[taken.entry_ids.index(job.entry_id)]


@PROPERTY
@given(st.dictionaries(st.text(max_size=10), st.text(max_size=50), min_size=1, max_size=3))
def test_an_entry_without_an_event_field_is_dead_lettered(fields: dict[str, str]) -> None:
    fields.pop(EVENT_FIELD, None)
    if not fields:
        fields = {"other": "x"}

    taken = Taken([dict(fields)])

    letters: Any = taken.client.xrange("dead-letter")
    [(_, letter)] = letters
    assert letter["reason"] == "invalidEvent"
    assert "no 'event' field" in letter["detail"]
    assert taken.batches == []


@contextmanager
def applier_over(taken: Taken, clock: list[float]) -> Iterator[BatchApplier]:
    fake = FakeThalamus()
    fake.add_case(7, caseData={"amount": 0.0, "refundApproved": False})
    client = taken.client
    keeper = LeaseKeeper(taken.schedule, interval=3600, lock_ttl=60, clock=lambda: clock[0])
    with (
        httpx.Client(transport=fake.transport, base_url="http://thalamus") as http,
        ThreadPoolExecutor(4) as executor,
    ):
        try:
            yield BatchApplier(
                redis_client=client,
                thalamus=ThalamusClient(http),
                guards=Guards(client, lock_ttl=60, ledger_ttl=3600),
                schedule=taken.schedule,
                keeper=keeper,
                executor=executor,
                streams=STREAMS,
                policy=RetryPolicy(max_attempts=2, max_delay=10, breaker_wait=1, fault_wait=1),
                limits=taken.config.limits,
                max_deliveries=5,
                clock=lambda: clock[0],
            )
        finally:
            keeper.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated_events(), min_size=1, max_size=4))
def test_any_mutation_of_a_valid_event_ends_in_exactly_one_outcome_once_applied(
    events: list[str],
) -> None:
    taken = Taken([{EVENT_FIELD: event} for event in numbered(events)])
    clock = [NOW]
    with applier_over(taken, clock) as applier:
        batch = [job for batch in taken.batches for job in batch]
        for _ in range(20):  # retries come back from the schedule until none is left
            if batch:
                applier.apply(batch)
            clock[0] += 60
            batch = taken.schedule.take_due(clock[0], 100).jobs
            if not batch and not taken.client.zcard(keys.DUE):
                break

    assert taken.client.xlen("results") == len(events)
    assert taken.client.hlen(keys.JOBS) == 0, "nothing left unfinished"
