"""Property: whatever an upstream service adds to the stream ends in exactly one outcome, and
nothing it adds crashes intake or the applier."""

from __future__ import annotations

import json
from typing import Any

import fakeredis
import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumers.intake import Accepted, Intake, IntakeConfig
from core.apply import EventApplier, Finished, Job
from core.events import EVENT_FIELD
from core.guards import Guards
from core.outcomes import Streams
from core.retry_policy import RetryPolicy
from tests.conftest import case_event
from tests.fake_thalamus import FakeThalamus
from thalamus.client import ThalamusClient

STREAMS = Streams("results", "dead-letter", 10_000, "casesync")

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


def _fake_thalamus() -> httpx.MockTransport:
    fake = FakeThalamus()
    fake.add_case(7, caseData={"amount": 0.0, "refundApproved": False})
    return fake.transport


def _run(entries: list[dict[str, str | bytes]]) -> tuple[fakeredis.FakeRedis, int]:
    """Every entry through intake and, if accepted, through the applier (no retry waits)."""
    client = fakeredis.FakeRedis(decode_responses=True, encoding_errors="surrogateescape")
    config = IntakeConfig(stream="events", group="g", consumer="c", queue="q")
    accepted: list[Accepted] = []
    intake = Intake(client, config, STREAMS, accepted.extend)
    intake.ensure_group()
    for fields in entries:
        client.xadd("events", fields)  # type: ignore[arg-type]
    intake.poll()
    http = httpx.Client(transport=_fake_thalamus(), base_url="http://thalamus")
    applier = EventApplier(
        redis_client=client,
        thalamus=ThalamusClient(http),
        guards=Guards(client, lock_ttl=60, ledger_ttl=3600, done_ttl=3600),
        streams=STREAMS,
        policy=RetryPolicy(max_attempts=2),
        limits=config.limits,
        max_deliveries=5,
    )
    for item in accepted:
        job = Job(item.raw, item.entry_id)
        for _ in range(10):
            result = applier.apply(job)
            if isinstance(result, Finished):
                break
            job = result.job
    return client, len(entries)


PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=5))
def test_any_bytes_end_in_exactly_one_outcome(payloads: list[bytes]) -> None:
    entries: list[dict[str, str | bytes]] = [{EVENT_FIELD: payload} for payload in payloads]
    client, count = _run(entries)
    assert client.xlen("results") == count
    assert client.xpending("events", "g")["pending"] == 0
    raw = fakeredis.FakeRedis(server=client.connection_pool.connection_kwargs["server"])
    letters: Any = raw.xrange("dead-letter")
    for _, letter in letters:
        assert letter[b"event"] in payloads, "a dead letter keeps the bytes as they came"


@PROPERTY
@given(st.lists(mutated_events(), min_size=1, max_size=4))
def test_any_mutation_of_a_valid_event_ends_in_exactly_one_outcome(events: list[str]) -> None:
    events = [
        json.dumps({**json.loads(e), "id": f"e{n}"}) if isinstance(json.loads(e), dict) else e
        for n, e in enumerate(events)
    ]
    client, count = _run([{EVENT_FIELD: event} for event in events])
    outcomes: Any = client.xrange("results")
    assert len(outcomes) == count
    assert client.xpending("events", "g")["pending"] == 0


@PROPERTY
@given(st.dictionaries(st.text(max_size=10), st.text(max_size=50), min_size=1, max_size=3))
def test_an_entry_without_an_event_field_is_dead_lettered(fields: dict[str, str]) -> None:
    fields.pop(EVENT_FIELD, None)
    if not fields:
        fields = {"other": "x"}
    client, _ = _run([dict(fields)])
    letters: Any = client.xrange("dead-letter")
    [(_, letter)] = letters
    assert letter["reason"] == "invalidEvent"
    assert "no 'event' field" in letter["detail"]
