"""Intake: events stream -> enqueued tasks through a consumer group (fakeredis and Valkey)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import redis
from kombu.exceptions import OperationalError

from consumers.intake import Accepted, Intake, IntakeConfig
from tasks.outcomes import Streams

STREAMS = Streams(
    results="casesync:results",
    dead_letter="casesync:dead-letter",
    results_max_length=1000,
    source="casesync",
)
EVENTS = "casesync:events"
GROUP = "casesync"
QUEUE = "casesync-tasks"

MakeIntake = Callable[..., Intake]


def event(event_id: str = "e1", case_id: int = 12345, **extra: Any) -> str:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": "urn:example:billing",
            "type": "thalamus.case.update",
            "time": "2026-11-28T10:15:00Z",
            "data": {"caseInstanceId": case_id, "categoryCode": "Reclamo", "typeCode": "T"},
            **extra,
        }
    )


class Queue:
    """The enqueue function intake is given: keeps what it was handed, or fails on cue.

    Like Celery's Redis transport, it also pushes one message per task on the queue's list,
    which is what intake's back-pressure measures.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.items: list[Accepted] = []
        self.failures = 0

    def __call__(self, accepted: Sequence[Accepted]) -> None:
        if self.failures:
            self.failures -= 1
            raise OperationalError("broker unreachable")
        self.items.extend(accepted)
        self.client.rpush(QUEUE, *(item.entry_id for item in accepted))

    @property
    def ids(self) -> list[str]:
        return [item.event.id for item in self.items]


@pytest.fixture
def queue(any_redis: redis.Redis) -> Queue:
    any_redis.xgroup_create(EVENTS, GROUP, id="0", mkstream=True)
    return Queue(any_redis)


@pytest.fixture
def make_intake(any_redis: redis.Redis, queue: Queue) -> MakeIntake:
    def make(consumer: str = "alive", **config: Any) -> Intake:
        options: dict[str, Any] = {"block_ms": 10, "claim_idle": 60.0, "max_deliveries": 2}
        options.update(config)
        settings = IntakeConfig(EVENTS, GROUP, consumer, QUEUE, **options)
        intake = Intake(any_redis, settings, STREAMS, queue)
        intake.ensure_group()
        return intake

    return make


@pytest.fixture
def intake(make_intake: MakeIntake) -> Intake:
    return make_intake()


def publish(client: redis.Redis, *events: str, field: str = "event") -> list[str]:
    return [str(client.xadd(EVENTS, {field: raw})) for raw in events]


def drain(intake: Intake, rounds: int = 3) -> int:
    """Poll a few times (the first poll of a consumer reads its own pending entries)."""
    return sum(intake.poll() for _ in range(rounds))


def pending(client: redis.Redis) -> int:
    summary: Any = client.xpending(EVENTS, GROUP)
    return int(summary["pending"])


def dead_letters(client: redis.Redis) -> list[dict[str, str]]:
    entries: Any = client.xrange(STREAMS.dead_letter)
    return [fields for _, fields in entries]


def outcomes(client: redis.Redis, stream: str = STREAMS.results) -> list[dict[str, Any]]:
    entries: Any = client.xrange(stream)
    return [json.loads(fields["event"]) for _, fields in entries]


def read_as(client: redis.Redis, consumer: str) -> None:
    """Another consumer reads every new entry and never acknowledges (it dies)."""
    client.xreadgroup(GROUP, consumer, {EVENTS: ">"}, count=100)


def test_valid_entries_are_enqueued_in_stream_order_and_acknowledged(
    any_redis: redis.Redis, intake: Intake, queue: Queue
) -> None:
    raws = [event("e1"), event("e2", case_id=7), event("e3")]
    ids = publish(any_redis, *raws)

    assert drain(intake) == 3

    assert [(item.entry_id, item.raw, item.event.id) for item in queue.items] == [
        (ids[0], raws[0], "e1"),
        (ids[1], raws[1], "e2"),
        (ids[2], raws[2], "e3"),
    ]
    assert queue.items[1].event.case_id == 7
    assert pending(any_redis) == 0
    assert dead_letters(any_redis) == []
    assert outcomes(any_redis) == []


def test_invalid_entries_are_dead_lettered_and_acknowledged_never_enqueued(
    any_redis: redis.Redis, intake: Intake, queue: Queue
) -> None:
    no_code = json.loads(event("e2", replyto="billing:results"))
    del no_code["data"]["typeCode"]
    publish(any_redis, event("e1"), "{broken", json.dumps(no_code), event("e4"))
    publish(any_redis, event("e5"), field="payload")

    drain(intake)

    assert queue.ids == ["e1", "e4"]
    assert pending(any_redis) == 0
    letters = dead_letters(any_redis)
    assert [(letter["reason"], letter["event"]) for letter in letters[:2]] == [
        ("invalidEvent", "{broken"),
        ("CodeRequired", json.dumps(no_code)),
    ]
    assert letters[1]["requestId"] == "e2"
    assert letters[1]["attempts"] == "0"
    assert letters[2]["reason"] == "invalidEvent"
    assert "'event'" in letters[2]["detail"]
    results = outcomes(any_redis)
    assert [outcome["type"] for outcome in results] == ["casesync.update.deadlettered"] * 3
    assert results[1]["data"]["reason"] == "CodeRequired"
    assert results[1]["subject"] == "12345"
    assert outcomes(any_redis, "billing:results") == [results[1]]


@pytest.mark.parametrize("name", ["casesync", "unacked", "_kombu.binding.casesync"])
def test_an_entry_replying_to_a_key_celery_uses_is_dead_lettered_and_the_key_left_alone(
    any_redis: redis.Redis, intake: Intake, queue: Queue, name: str
) -> None:
    publish(any_redis, event("bad", replyto=name), event("ok"))

    drain(intake)

    assert queue.ids == ["ok"]
    [letter] = dead_letters(any_redis)
    assert letter["reason"] == "invalidEvent"
    assert "replyto" in letter["detail"]
    assert [o["data"]["requestId"] for o in outcomes(any_redis)] == ["bad"]
    assert any_redis.exists(name) == 0
    assert pending(any_redis) == 0


def test_an_entry_from_the_future_is_dead_lettered_by_intakes_clock(
    any_redis: redis.Redis, queue: Queue
) -> None:
    publish(any_redis, event("future"))  # 2026-11-28T10:15:00Z
    config = IntakeConfig(EVENTS, GROUP, "alive", QUEUE, block_ms=10)
    an_hour_before = Intake(any_redis, config, STREAMS, queue, clock=lambda: 1_795_857_300.0)

    drain(an_hour_before)

    assert queue.ids == []
    [letter] = dead_letters(any_redis)
    assert "CASESYNC_MAX_CLOCK_SKEW" in letter["detail"]


def test_a_dead_letters_reply_key_that_is_not_a_stream_does_not_stop_intake(
    any_redis: redis.Redis, intake: Intake, queue: Queue
) -> None:
    any_redis.hset("billing:results", "field", "value")
    publish(any_redis, "{}", event("e2", replyto="billing:results", type="x"), event("e3"))

    assert drain(intake) == 3

    assert queue.ids == ["e3"]
    assert pending(any_redis) == 0
    assert len(dead_letters(any_redis)) == 2
    assert len(outcomes(any_redis)) == 2
    assert any_redis.type("billing:results") == "hash"


def test_when_enqueueing_fails_nothing_is_acknowledged_or_dead_lettered(
    any_redis: redis.Redis, intake: Intake, queue: Queue
) -> None:
    publish(any_redis, event("e1"), "{broken")
    queue.failures = 1

    with pytest.raises(OperationalError):
        intake.poll()

    assert queue.items == []
    assert pending(any_redis) == 2
    assert dead_letters(any_redis) == []
    assert outcomes(any_redis) == []


def test_entries_left_pending_by_a_crash_are_read_first_when_the_consumer_restarts(
    any_redis: redis.Redis, make_intake: MakeIntake, queue: Queue
) -> None:
    publish(any_redis, event("e1"), event("e2"))
    read_as(any_redis, "worker-1")  # read, then the process died before handing them on

    restarted = make_intake("worker-1", claim_idle=3600.0)

    assert restarted.poll() == 2
    assert queue.ids == ["e1", "e2"]
    assert pending(any_redis) == 0


def test_a_full_task_queue_stops_intake_from_reading(
    any_redis: redis.Redis, make_intake: MakeIntake, queue: Queue
) -> None:
    intake = make_intake(backlog=4)
    publish(any_redis, *(event(f"e{n}") for n in range(6)))
    any_redis.rpush(QUEUE, *range(4))

    assert drain(intake) == 0
    assert queue.items == []
    assert pending(any_redis) == 0  # nothing was even read

    any_redis.ltrim(QUEUE, 0, 1)  # two tasks taken by workers: room for two
    assert drain(intake) == 2
    assert queue.ids == ["e0", "e1"]
    assert any_redis.llen(QUEUE) == 4


def test_intake_reads_at_most_a_batch_at_a_time(
    any_redis: redis.Redis, make_intake: MakeIntake, queue: Queue
) -> None:
    intake = make_intake(batch=2, backlog=100)
    publish(any_redis, *(event(f"e{n}") for n in range(5)))

    # The first poll finds no pending entries of its own and reads new ones at once.
    assert intake.poll() == 2
    assert intake.poll() == 2
    assert intake.poll() == 1
    assert intake.poll() == 0
    assert queue.ids == [f"e{n}" for n in range(5)]


def test_entries_idle_on_a_dead_consumer_are_reclaimed_and_enqueued(
    any_redis: redis.Redis, make_intake: MakeIntake, queue: Queue
) -> None:
    publish(any_redis, event("e1"), "{broken")
    read_as(any_redis, "dead")
    intake = make_intake(claim_idle=0.01)
    time.sleep(0.05)

    assert intake.reclaim() == 2

    assert queue.ids == ["e1"]
    assert [letter["reason"] for letter in dead_letters(any_redis)] == ["invalidEvent"]
    assert pending(any_redis) == 0


def test_entries_not_yet_idle_long_enough_are_left_to_their_consumer(
    any_redis: redis.Redis, make_intake: MakeIntake, queue: Queue
) -> None:
    publish(any_redis, event("e1"))
    read_as(any_redis, "busy")

    assert make_intake(claim_idle=3600.0).reclaim() == 0
    assert queue.items == []
    assert pending(any_redis) == 1


def deliver(client: redis.Redis, times: int) -> None:
    """Every pending entry is delivered ``times`` times, each to a consumer that dies."""
    read_as(client, "dead-0")
    entries: Any = client.xpending_range(EVENTS, GROUP, min="-", max="+", count=100)
    for n in range(1, times):
        client.xclaim(EVENTS, GROUP, f"dead-{n}", 0, [e["message_id"] for e in entries])


def test_an_entry_delivered_more_than_max_deliveries_times_is_a_poison_event(
    any_redis: redis.Redis, make_intake: MakeIntake, queue: Queue
) -> None:
    raw = event("poison", replyto="billing:results")
    [entry_id] = publish(any_redis, raw)
    deliver(any_redis, 2)  # max_deliveries; the reclaim is the third delivery
    intake = make_intake(claim_idle=0.01)
    time.sleep(0.05)

    assert intake.reclaim() == 1

    assert queue.items == []
    assert pending(any_redis) == 0
    [letter] = dead_letters(any_redis)
    assert letter["reason"] == "poisonEvent"
    assert letter["event"] == raw
    assert letter["entryId"] == entry_id
    assert "delivered 3 times" in letter["detail"]
    assert "CASESYNC_MAX_DELIVERIES=2" in letter["detail"]
    [outcome] = outcomes(any_redis)
    assert outcome["data"]["reason"] == "poisonEvent"
    assert outcome["data"]["requestId"] == "poison"
    assert outcomes(any_redis, "billing:results") == [outcome]


def test_an_entry_within_max_deliveries_is_reclaimed_normally(
    any_redis: redis.Redis, make_intake: MakeIntake, queue: Queue
) -> None:
    publish(any_redis, event("e1"))
    deliver(any_redis, 1)
    intake = make_intake(claim_idle=0.01)
    time.sleep(0.05)

    assert intake.reclaim() == 1
    assert queue.ids == ["e1"]
    assert dead_letters(any_redis) == []


def test_an_entry_deleted_from_the_stream_while_pending_is_dropped_from_the_pending_list(
    any_redis: redis.Redis, make_intake: MakeIntake, queue: Queue
) -> None:
    [entry_id] = publish(any_redis, event("e1"))
    read_as(any_redis, "worker-1")
    any_redis.xdel(EVENTS, entry_id)

    make_intake("worker-1").poll()

    assert queue.items == []
    assert pending(any_redis) == 0


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def run_in_thread(intake: Intake) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=intake.run, args=(stop,), kwargs={"idle_wait": 0.01})
    thread.start()
    return thread, stop


def test_run_hands_on_entries_until_its_stop_event_is_set(
    any_redis: redis.Redis, intake: Intake, queue: Queue
) -> None:
    thread, stop = run_in_thread(intake)
    try:
        publish(any_redis, event("e1"), event("e2"))
        wait_for(lambda: len(queue.items) == 2)
    finally:
        stop.set()
        thread.join(timeout=5)

    assert not thread.is_alive()
    assert queue.ids == ["e1", "e2"]
    assert pending(any_redis) == 0


def test_run_outlives_a_failure_to_enqueue_and_hands_the_entries_on_later(
    any_redis: redis.Redis, make_intake: MakeIntake, queue: Queue
) -> None:
    queue.failures = 1
    thread, stop = run_in_thread(make_intake(claim_idle=0.2))
    try:
        publish(any_redis, event("e1"))
        wait_for(lambda: queue.ids == ["e1"])
    finally:
        stop.set()
        thread.join(timeout=5)

    assert not thread.is_alive()
    assert pending(any_redis) == 0


def test_ensure_group_is_idempotent(any_redis: redis.Redis, intake: Intake) -> None:
    intake.ensure_group()
    intake.ensure_group()

    groups: Any = any_redis.xinfo_groups(EVENTS)
    assert [group["name"] for group in groups] == [GROUP]


def test_a_consumer_leaving_with_nothing_pending_is_removed_from_the_group(
    any_redis: redis.Redis, intake: Intake, queue: Queue
) -> None:
    publish(any_redis, event("e1"))
    drain(intake)

    intake.leave()

    consumers: Any = any_redis.xinfo_consumers(EVENTS, GROUP)
    assert consumers == []


def test_an_entry_whose_task_went_silent_is_handed_on_again_once(
    any_redis: redis.Redis, make_intake: MakeIntake, queue: Queue
) -> None:
    # The broker lost the task message (kombu pops it before recording it as unacknowledged):
    # nothing ever touches the entry again, and no outcome is written.
    first = make_intake("one", lost_after=0.05)
    second = make_intake("two", lost_after=0.05)
    publish(any_redis, event("e1"), event("e2"))
    first.poll()
    assert queue.ids == ["e1", "e2"]
    any_redis.zrem("casesync:inflight", queue.items[1].entry_id)  # e2's outcome was written

    assert first.recover_lost() == 0, "not silent long enough yet"
    time.sleep(0.1)
    assert first.recover_lost() + second.recover_lost() == 1, "handed on by one worker only"

    assert queue.ids == ["e1", "e2", "e1"]
    assert pending(any_redis) == 0
