"""Intake: events stream and schedule -> batches of leased jobs, one task each (fakeredis, Valkey).

``hand_on`` is a plain callable here: :class:`Sent` records every batch and, like Celery's Redis
transport, pushes one message per task on the queue's list, which intake's back-pressure reads.
The schedule runs on a clock the test moves by hand.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import redis
from kombu.exceptions import OperationalError
from redis.client import Pipeline

from consumers.intake import Intake, IntakeConfig
from core import trace
from core.outcomes import Streams
from core.schedule import Job, Schedule
from settings import keys

STREAMS = Streams(
    results="casesync:results",
    dead_letter="casesync:dead-letter",
    results_max_length=1000,
    source="casesync",
)
EVENTS = "casesync:events"
GROUP = "casesync"
QUEUE = "casesync-tasks"
LEASE = 60.0
#: IntakeConfig's default: the schedule is looked at this often (seconds).
SCHEDULE_CHECK = 0.05

MakeIntake = Callable[..., Intake]


class Clock:
    """The intake's and the schedule's clock, moved by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Sent:
    """The ``hand_on`` intake is given: keeps each batch it was handed, or fails on cue."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.batches: list[list[Job]] = []
        self.failures = 0

    def __call__(self, jobs: Sequence[Job]) -> None:
        if self.failures:
            self.failures -= 1
            raise OperationalError("broker unreachable")
        self.batches.append(list(jobs))
        self.client.rpush(QUEUE, "task")

    @property
    def ids(self) -> list[list[str]]:
        """Each batch as the ids of its events."""
        return [[json.loads(job.raw_event)["id"] for job in batch] for batch in self.batches]

    @property
    def jobs(self) -> list[Job]:
        return [job for batch in self.batches for job in batch]


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


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def schedule(any_redis: redis.Redis) -> Schedule:
    return Schedule(any_redis, lease=LEASE)


@pytest.fixture
def sent(any_redis: redis.Redis) -> Sent:
    any_redis.xgroup_create(EVENTS, GROUP, id="0", mkstream=True)
    return Sent(any_redis)


@pytest.fixture
def make_intake(any_redis: redis.Redis, schedule: Schedule, sent: Sent, clock: Clock) -> MakeIntake:
    def make(
        consumer: str = "alive",
        *,
        paused: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = clock,
        **config: Any,
    ) -> Intake:
        options: dict[str, Any] = {
            "block_ms": 10,
            "claim_idle": 60.0,
            "max_deliveries": 2,
            "backlog": 100,
        }
        options.update(config)
        settings = IntakeConfig(EVENTS, GROUP, consumer, QUEUE, **options)
        intake = Intake(any_redis, settings, STREAMS, schedule, sent, paused=paused, clock=clock)
        intake.ensure_group()
        return intake

    return make


@pytest.fixture
def intake(make_intake: MakeIntake) -> Intake:
    return make_intake()


def publish(client: redis.Redis, *events: str, field: str = "event") -> list[str]:
    return [str(client.xadd(EVENTS, {field: raw})) for raw in events]


def pending(client: redis.Redis) -> int:
    summary: Any = client.xpending(EVENTS, GROUP)
    return int(summary["pending"])


def dead_letters(client: redis.Redis) -> list[dict[str, str]]:
    entries: Any = client.xrange(STREAMS.dead_letter)
    return [fields for _, fields in entries]


def outcomes(client: redis.Redis, stream: str = STREAMS.results) -> list[dict[str, Any]]:
    entries: Any = client.xrange(stream)
    return [json.loads(fields["event"]) for _, fields in entries]


def leased(client: redis.Redis) -> dict[str, float]:
    """Entry id -> when its lease runs out (epoch s)."""
    found: Any = client.zrange(keys.LEASES, 0, -1, withscores=True)
    return {entry_id: score / 1000 for entry_id, score in found}


def due(client: redis.Redis) -> dict[str, float]:
    """Entry id -> when it is due (epoch s)."""
    found: Any = client.zrange(keys.DUE, 0, -1, withscores=True)
    return {entry_id: score / 1000 for entry_id, score in found}


def read_as(client: redis.Redis, consumer: str) -> None:
    """Another consumer reads every new entry and never acknowledges (it dies)."""
    client.xreadgroup(GROUP, consumer, {EVENTS: ">"}, count=100)


def put_on_schedule(
    client: redis.Redis, schedule: Schedule, job: Job, *, leased_at: float, due_at: float | None
) -> None:
    """A job as an earlier task left it: leased at ``leased_at`` and, unless ``due_at`` is None
    (its task still runs, or died), put back on the schedule for ``due_at``."""
    pipe = client.pipeline(transaction=True)
    schedule.add_leased(pipe, [job], leased_at)
    pipe.execute()
    if due_at is not None:
        pipe = client.pipeline(transaction=True)
        schedule.add_retry(pipe, job, due_at)
        pipe.execute()


# --- new entries -------------------------------------------------------------------------------


def test_one_read_becomes_one_batch_of_leased_jobs_in_stream_order(
    any_redis: redis.Redis, intake: Intake, sent: Sent, clock: Clock
) -> None:
    raws = [event("e1"), event("e2", case_id=7), event("e3")]
    ids = publish(any_redis, *raws)

    assert intake.poll() == 3

    [batch] = sent.batches
    assert [(job.entry_id, job.raw_event) for job in batch] == list(zip(ids, raws, strict=True))
    assert all((job.attempts, job.lost, job.waits) == (0, 0, 0) for job in batch)
    assert pending(any_redis) == 0
    # From now on the schedule answers for them: leased for one lease, their jobs stored.
    assert leased(any_redis) == dict.fromkeys(ids, clock.now + LEASE)
    assert set(any_redis.hkeys(keys.JOBS)) == set(ids)
    assert dead_letters(any_redis) == []
    assert outcomes(any_redis) == []


def test_intake_reads_at_most_a_batch_at_a_time(
    any_redis: redis.Redis, make_intake: MakeIntake, sent: Sent
) -> None:
    intake = make_intake(batch=2)
    publish(any_redis, *(event(f"e{n}") for n in range(5)))

    # The first poll finds no pending entries of its own and reads new ones at once.
    assert [intake.poll() for _ in range(4)] == [2, 2, 1, 0]
    assert sent.ids == [["e0", "e1"], ["e2", "e3"], ["e4"]]


def test_invalid_entries_are_dead_lettered_at_once_with_what_to_fix_never_handed_on(
    any_redis: redis.Redis, intake: Intake, sent: Sent
) -> None:
    no_code = json.loads(event("e2", replyto="billing:results"))
    del no_code["data"]["typeCode"]
    ids = publish(any_redis, event("e1"), "{broken", json.dumps(no_code), event("e4"))
    ids += publish(any_redis, event("e5"), field="payload")

    assert intake.poll() == 5

    assert sent.ids == [["e1", "e4"]]
    assert pending(any_redis) == 0
    assert set(any_redis.hkeys(keys.JOBS)) == {ids[0], ids[3]}, "only the valid ones leased"
    letters = dead_letters(any_redis)
    assert [(letter["reason"], letter["event"], letter["entryId"]) for letter in letters] == [
        ("invalidEvent", "{broken", ids[1]),
        ("CodeRequired", json.dumps(no_code), ids[2]),
        ("invalidEvent", json.dumps({"payload": event("e5")}), ids[4]),
    ]
    # Each detail says what is wrong, so the sender can fix it.
    assert "not JSON" in letters[0]["detail"]
    assert "data.typeCode" in letters[1]["detail"]
    assert "no 'event' field" in letters[2]["detail"]
    assert "payload" in letters[2]["detail"]
    assert letters[1]["requestId"] == "e2"
    assert letters[1]["attempts"] == "0"
    results = outcomes(any_redis)
    assert [outcome["type"] for outcome in results] == ["casesync.update.deadlettered"] * 3
    assert results[1]["data"]["reason"] == "CodeRequired"
    assert results[1]["subject"] == "12345"
    assert outcomes(any_redis, "billing:results") == [results[1]]


def test_a_read_of_only_invalid_entries_hands_nothing_on(
    any_redis: redis.Redis, intake: Intake, sent: Sent
) -> None:
    publish(any_redis, "{broken", "[]")

    assert intake.poll() == 2

    assert sent.batches == []
    assert len(dead_letters(any_redis)) == 2
    assert pending(any_redis) == 0


@pytest.fixture
def multi_fails(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The next MULTI is lost with the connection before EXEC; its commands are recorded."""
    lost: list[list[str]] = []
    execute = Pipeline.execute

    def fail_once(self: Pipeline, raise_on_error: bool = True) -> list[Any]:
        # redis-py's Pipeline shadows the method ``transaction`` with a flag of the same name.
        if vars(self)["transaction"] and not lost:
            lost.append([str(args[0]).upper() for args, _ in self.command_stack])
            self.reset()
            raise redis.ConnectionError("connection lost before EXEC")
        return execute(self, raise_on_error)

    monkeypatch.setattr(Pipeline, "execute", fail_once)
    return lost


@pytest.fixture
def multi_reply_lost(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The next MULTI runs, and its reply is lost with the connection; its commands are recorded."""
    ran: list[list[str]] = []
    execute = Pipeline.execute

    def lose_reply_once(self: Pipeline, raise_on_error: bool = True) -> list[Any]:
        if vars(self)["transaction"] and not ran:
            ran.append([str(args[0]).upper() for args, _ in self.command_stack])
            execute(self, raise_on_error)
            raise redis.ConnectionError("connection lost before the reply")
        return execute(self, raise_on_error)

    monkeypatch.setattr(Pipeline, "execute", lose_reply_once)
    return ran


def test_entries_are_acknowledged_only_in_the_multi_that_leases_or_dead_letters_them(
    any_redis: redis.Redis, intake: Intake, sent: Sent, multi_fails: list[list[str]]
) -> None:
    publish(any_redis, event("e1"), "{broken")

    with pytest.raises(redis.ConnectionError):
        intake.poll()

    # One MULTI held the lease, the dead letter and the acknowledgement: lost together.
    [commands] = multi_fails
    assert {"HSET", "ZADD", "XADD", "XACK"} <= set(commands)
    assert commands.index("XACK") > max(commands.index("ZADD"), commands.index("XADD"))
    assert pending(any_redis) == 2, "nothing acknowledged"
    assert leased(any_redis) == {}
    assert any_redis.hlen(keys.JOBS) == 0
    assert dead_letters(any_redis) == []
    assert outcomes(any_redis) == []
    assert sent.batches == []


def test_entries_left_pending_by_a_crash_are_read_first_when_the_consumer_restarts(
    any_redis: redis.Redis, make_intake: MakeIntake, sent: Sent
) -> None:
    publish(any_redis, event("e1"), event("e2"))
    read_as(any_redis, "worker-1")  # read, then the process died before its MULTI
    publish(any_redis, event("e3"))

    restarted = make_intake("worker-1", claim_idle=3600.0)

    assert restarted.poll() == 2
    assert restarted.poll() == 1
    assert sent.ids == [["e1", "e2"], ["e3"]]
    assert pending(any_redis) == 0


def test_an_entry_deleted_from_the_stream_while_pending_is_dropped_from_the_pending_list(
    any_redis: redis.Redis, make_intake: MakeIntake, sent: Sent
) -> None:
    [entry_id] = publish(any_redis, event("e1"))
    read_as(any_redis, "worker-1")
    any_redis.xdel(EVENTS, entry_id)

    make_intake("worker-1").poll()

    assert sent.batches == []
    assert pending(any_redis) == 0
    assert any_redis.hlen(keys.JOBS) == 0


# --- handing on, and a send that fails ---------------------------------------------------------


def test_a_failed_send_makes_the_jobs_due_again_at_once(
    any_redis: redis.Redis, intake: Intake, sent: Sent, clock: Clock
) -> None:
    ids = publish(any_redis, event("e1"), event("e2"))
    sent.failures = 1

    with pytest.raises(OperationalError):
        intake.poll()

    assert sent.batches == []
    assert pending(any_redis) == 0, "acknowledged: the schedule answers for them"
    assert leased(any_redis) == {}
    assert due(any_redis) == dict.fromkeys(ids, clock.now)
    assert dead_letters(any_redis) == []

    clock.advance(SCHEDULE_CHECK)  # the next look at the schedule
    assert intake.poll() == 2
    assert sent.ids == [["e1", "e2"]]
    assert [job.lost for job in sent.jobs] == [0, 0], "a failed send is no lost lease"
    assert due(any_redis) == {}


def test_entries_leased_by_a_multi_whose_reply_was_lost_are_handed_on_at_the_next_round(
    any_redis: redis.Redis,
    intake: Intake,
    sent: Sent,
    clock: Clock,
    multi_reply_lost: list[list[str]],
) -> None:
    ids = publish(any_redis, event("e1"), event("e2"))
    with pytest.raises(redis.ConnectionError):
        intake.poll()
    assert multi_reply_lost, "the MULTI ran"
    assert sent.batches == []
    assert leased(any_redis) == dict.fromkeys(ids, clock.now + LEASE)
    assert pending(any_redis) == 0, "acknowledged: only the schedule knows them now"

    clock.advance(1.0)  # not a whole lease
    assert intake.poll() == 2
    assert sent.ids == [["e1", "e2"]]
    assert [job.lost for job in sent.jobs] == [0, 0]


def test_a_lost_multi_reply_gives_back_no_lease_another_worker_took_since(
    any_redis: redis.Redis,
    make_intake: MakeIntake,
    schedule: Schedule,
    sent: Sent,
    clock: Clock,
    multi_reply_lost: list[list[str]],
) -> None:
    intake = make_intake()
    publish(any_redis, event("e1"))
    with pytest.raises(redis.ConnectionError):
        intake.poll()
    # This intake is cut off for longer than a lease: the lease runs out, another worker hands
    # the entry on, and its task holds it under a fresh lease.
    clock.advance(LEASE + 1.0)
    assert make_intake("other").move_due(10) == 1
    leases_before = leased(any_redis)

    intake.poll()
    assert leased(any_redis) == leases_before, "the other worker's lease is left alone"
    assert due(any_redis) == {}


def test_a_failed_send_of_due_entries_makes_every_entry_moved_due_again(
    any_redis: redis.Redis, intake: Intake, schedule: Schedule, sent: Sent, clock: Clock
) -> None:
    for n in range(3):
        put_on_schedule(
            any_redis, schedule, Job(f"1-{n}", event(f"e{n}")), leased_at=clock.now, due_at=None
        )
    clock.advance(LEASE + 1)  # their worker died: three batches of one
    sent.failures = 1

    with pytest.raises(OperationalError):
        intake.poll()

    assert leased(any_redis) == {}
    assert due(any_redis) == {f"1-{n}": clock.now for n in range(3)}
    clock.advance(SCHEDULE_CHECK)
    assert intake.poll() == 3
    assert [job.lost for job in sent.jobs] == [1, 1, 1]


# --- the schedule ------------------------------------------------------------------------------


def test_due_entries_are_handed_on_before_new_entries_are_read(
    any_redis: redis.Redis, intake: Intake, schedule: Schedule, sent: Sent, clock: Clock
) -> None:
    retry = Job("1-1", event("retry"), attempts=2, first_attempt_at=clock.now - 30)
    put_on_schedule(any_redis, schedule, retry, leased_at=clock.now - 30, due_at=clock.now - 1)
    later = Job("1-2", event("later"))
    put_on_schedule(any_redis, schedule, later, leased_at=clock.now - 30, due_at=clock.now + 10)
    publish(any_redis, event("new"))

    assert intake.poll() == 2

    assert sent.ids == [["retry"], ["new"]]
    assert sent.batches[0] == [retry], "its retry state travels with it"
    assert leased(any_redis)["1-1"] == clock.now + LEASE
    assert due(any_redis) == {"1-2": clock.now + 10}, "not due yet: left waiting"


def test_due_entries_go_in_one_batch_in_stream_order(
    any_redis: redis.Redis,
    intake: Intake,
    schedule: Schedule,
    sent: Sent,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for entry_id in ("9-0", "10-0", "2-5"):
        job = Job(entry_id, event(f"e{entry_id}"))
        put_on_schedule(any_redis, schedule, job, leased_at=clock.now, due_at=clock.now - 1)
    caplog.set_level(logging.WARNING, logger="casesync.intake")

    assert intake.poll() == 3

    assert [[job.entry_id for job in batch] for batch in sent.batches] == [["2-5", "9-0", "10-0"]]
    assert "lease ran out" not in caplog.text, "retries that fell due were never lost"


def test_entries_whose_lease_ran_out_are_handed_on_one_per_batch(
    any_redis: redis.Redis,
    intake: Intake,
    schedule: Schedule,
    sent: Sent,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for n in (1, 2):  # a worker took these and died
        job = Job(f"1-{n}", event(f"lost{n}"))
        put_on_schedule(any_redis, schedule, job, leased_at=clock.now - LEASE - 1, due_at=None)
    for n in (3, 4):  # retries due now
        job = Job(f"1-{n}", event(f"retry{n}"))
        put_on_schedule(any_redis, schedule, job, leased_at=clock.now, due_at=clock.now)
    caplog.set_level(logging.WARNING, logger="casesync.intake")

    assert intake.poll() == 4

    # Alone, so an event that kills its worker can take down no other event with it.
    assert sent.ids == [["lost1"], ["lost2"], ["retry3", "retry4"]]
    assert [job.lost for job in sent.jobs] == [1, 1, 0, 0]
    assert leased(any_redis) == {f"1-{n}": clock.now + LEASE for n in (1, 2, 3, 4)}
    assert "handed on again 2 entries whose lease ran out" in caplog.text


def test_an_entry_once_lost_still_goes_alone_when_its_retry_falls_due(
    any_redis: redis.Redis, intake: Intake, schedule: Schedule, sent: Sent, clock: Clock
) -> None:
    for n in (1, 2):
        job = Job(f"1-{n}", event(f"e{n}"))
        put_on_schedule(any_redis, schedule, job, leased_at=clock.now, due_at=None)
    clock.advance(LEASE + 1)
    intake.poll()  # both lost once, handed on alone; their tasks then put them back as retries
    for job in sent.jobs:
        pipe = any_redis.pipeline(transaction=True)
        schedule.add_retry(pipe, job, clock.now + 5)
        pipe.execute()
    sent.batches.clear()
    clock.advance(5)

    assert intake.poll() == 2

    assert sent.ids == [["e1"], ["e2"]]
    assert [job.lost for job in sent.jobs] == [1, 1], "a retry counts no new loss"


def test_an_entry_finished_meanwhile_is_not_handed_on_again(
    any_redis: redis.Redis, intake: Intake, schedule: Schedule, sent: Sent, clock: Clock
) -> None:
    put_on_schedule(any_redis, schedule, Job("1-1", event()), leased_at=clock.now, due_at=None)
    pipe = any_redis.pipeline(transaction=True)
    Schedule.add_finished(pipe, "1-1")
    pipe.execute()
    clock.advance(LEASE + 1)

    assert intake.poll() == 0
    assert sent.batches == []


def test_intake_takes_nothing_while_the_queue_holds_backlog_tasks(
    any_redis: redis.Redis, make_intake: MakeIntake, schedule: Schedule, sent: Sent, clock: Clock
) -> None:
    intake = make_intake(backlog=2)
    publish(any_redis, *(event(f"e{n}") for n in range(3)))
    put_on_schedule(any_redis, schedule, Job("1-1", event("retry")), leased_at=0, due_at=0)
    any_redis.rpush(QUEUE, "task-1", "task-2")

    assert intake.poll() == 0
    assert sent.batches == []
    assert pending(any_redis) == 0, "nothing was even read"
    assert due(any_redis) == {"1-1": 0}, "nothing moved from the schedule"

    any_redis.lpop(QUEUE)  # a worker took one task: room for one more
    assert intake.poll() == 4
    assert sent.ids == [["retry"], ["e0", "e1", "e2"]]
    assert intake.poll() == 0, "the full queue holds intake again"


def timed_poll(intake: Intake) -> float:
    started = time.monotonic()
    intake.poll()
    return time.monotonic() - started


def test_with_nothing_due_soon_a_read_blocks_block_ms(make_intake: MakeIntake) -> None:
    intake = make_intake(block_ms=400, schedule_check=10.0)

    assert 0.35 <= timed_poll(intake) < 2


@pytest.mark.parametrize("waits_on", ["a retry", "a lease"])
def test_a_read_blocks_no_longer_than_until_the_schedule_has_an_entry_due(
    any_redis: redis.Redis,
    make_intake: MakeIntake,
    schedule: Schedule,
    sent: Sent,
    clock: Clock,
    waits_on: str,
) -> None:
    job = Job("1-1", event())
    if waits_on == "a retry":
        put_on_schedule(any_redis, schedule, job, leased_at=clock.now, due_at=clock.now + 0.05)
    else:
        put_on_schedule(any_redis, schedule, job, leased_at=clock.now - LEASE + 0.05, due_at=None)
    intake = make_intake(block_ms=2000, schedule_check=10.0)

    assert timed_poll(intake) < 0.5
    assert sent.batches == [], "not due yet when intake looked"


def test_a_read_blocks_no_longer_than_until_the_next_look_at_the_schedule(
    make_intake: MakeIntake,
) -> None:
    # Retries other workers put on the schedule are picked up within schedule_check.
    intake = make_intake(block_ms=2000, schedule_check=0.05)

    assert timed_poll(intake) < 0.5


def test_a_read_after_due_entries_were_handed_on_does_not_block(
    any_redis: redis.Redis, make_intake: MakeIntake, schedule: Schedule, sent: Sent, clock: Clock
) -> None:
    intake = make_intake(block_ms=2000, schedule_check=10.0)
    put_on_schedule(any_redis, schedule, Job("1-1", event()), leased_at=0, due_at=clock.now)

    assert timed_poll(intake) < 1.0
    assert len(sent.batches) == 1


def test_the_schedule_is_looked_at_once_per_schedule_check(
    any_redis: redis.Redis, make_intake: MakeIntake, schedule: Schedule, sent: Sent, clock: Clock
) -> None:
    intake = make_intake(schedule_check=1.0)
    intake.poll()
    # Another worker's task puts a retry on the schedule, due at once.
    put_on_schedule(any_redis, schedule, Job("1-1", event("retry")), leased_at=0, due_at=0)

    clock.advance(0.5)
    assert intake.poll() == 0, "not looked at again yet"
    clock.advance(0.5)
    assert intake.poll() == 1
    assert sent.ids == [["retry"]]


def test_a_full_move_looks_at_the_schedule_again_at_once(
    any_redis: redis.Redis, make_intake: MakeIntake, schedule: Schedule, sent: Sent, clock: Clock
) -> None:
    intake = make_intake(batch=2, schedule_check=10.0)
    for n in range(3):
        job = Job(f"1-{n}", event(f"e{n}"))
        put_on_schedule(any_redis, schedule, job, leased_at=0, due_at=clock.now - 1)
    publish(any_redis, event("new"))

    assert intake.poll() == 2, "a batch of due entries, and no room left for new ones"
    assert intake.poll() == 2, "the rest of the due entries, then new ones, at the same moment"
    assert sent.ids == [["e0", "e1"], ["e2"], ["new"]]


# --- entries of dead consumers -----------------------------------------------------------------


def test_entries_idle_on_a_dead_consumer_are_reclaimed_and_handed_on(
    any_redis: redis.Redis, make_intake: MakeIntake, sent: Sent
) -> None:
    ids = publish(any_redis, event("e1"), "{broken", event("e3"))
    read_as(any_redis, "dead")
    intake = make_intake(claim_idle=0.01)
    time.sleep(0.05)

    assert intake.reclaim() == 3

    assert sent.ids == [["e1", "e3"]]
    assert set(leased(any_redis)) == {ids[0], ids[2]}
    assert [letter["reason"] for letter in dead_letters(any_redis)] == ["invalidEvent"]
    assert pending(any_redis) == 0


def test_entries_not_yet_idle_long_enough_are_left_to_their_consumer(
    any_redis: redis.Redis, make_intake: MakeIntake, sent: Sent
) -> None:
    publish(any_redis, event("e1"))
    read_as(any_redis, "busy")

    assert make_intake(claim_idle=3600.0).reclaim() == 0
    assert sent.batches == []
    assert pending(any_redis) == 1


def deliver(client: redis.Redis, times: int) -> None:
    """Every pending entry is delivered ``times`` times, each to a consumer that dies."""
    read_as(client, "dead-0")
    entries: Any = client.xpending_range(EVENTS, GROUP, min="-", max="+", count=100)
    for n in range(1, times):
        client.xclaim(EVENTS, GROUP, f"dead-{n}", 0, [e["message_id"] for e in entries])


def test_an_entry_delivered_more_than_max_deliveries_times_is_a_poison_event(
    any_redis: redis.Redis, make_intake: MakeIntake, sent: Sent
) -> None:
    raw = event("poison", replyto="billing:results")
    [entry_id] = publish(any_redis, raw)
    deliver(any_redis, 2)  # max_deliveries; the reclaim is the third delivery
    intake = make_intake(claim_idle=0.01)
    time.sleep(0.05)

    assert intake.reclaim() == 1

    assert sent.batches == []
    assert pending(any_redis) == 0
    assert any_redis.hlen(keys.JOBS) == 0
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
    any_redis: redis.Redis, make_intake: MakeIntake, sent: Sent
) -> None:
    publish(any_redis, event("e1"))
    deliver(any_redis, 1)
    intake = make_intake(claim_idle=0.01)
    time.sleep(0.05)

    assert intake.reclaim() == 1
    assert sent.ids == [["e1"]]
    assert dead_letters(any_redis) == []


# --- the intake thread -------------------------------------------------------------------------


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def run_in_thread() -> Iterator[Callable[[Intake], threading.Thread]]:
    stops: list[tuple[threading.Thread, threading.Event]] = []

    def start(intake: Intake) -> threading.Thread:
        stop = threading.Event()
        thread = threading.Thread(target=intake.run, args=(stop,), kwargs={"idle_wait": 0.01})
        thread.start()
        stops.append((thread, stop))
        return thread

    yield start
    for thread, stop in stops:
        stop.set()
        thread.join(timeout=5)
        assert not thread.is_alive()


def test_run_hands_on_entries_until_its_stop_event_is_set(
    any_redis: redis.Redis,
    make_intake: MakeIntake,
    sent: Sent,
    run_in_thread: Callable[[Intake], threading.Thread],
) -> None:
    run_in_thread(make_intake(clock=time.time))
    publish(any_redis, event("e1"), event("e2"))
    wait_for(lambda: len(sent.jobs) == 2)

    assert [event_id for batch in sent.ids for event_id in batch] == ["e1", "e2"]
    assert pending(any_redis) == 0


def test_run_outlives_a_failed_send_and_hands_the_entries_on_again(
    any_redis: redis.Redis,
    make_intake: MakeIntake,
    sent: Sent,
    run_in_thread: Callable[[Intake], threading.Thread],
) -> None:
    sent.failures = 1
    run_in_thread(make_intake(clock=time.time))
    publish(any_redis, event("e1"))
    wait_for(lambda: sent.ids == [["e1"]])

    assert pending(any_redis) == 0
    assert due(any_redis) == {}


def test_after_an_error_the_consumer_reads_its_own_pending_entries_first(
    any_redis: redis.Redis,
    make_intake: MakeIntake,
    sent: Sent,
    multi_fails: list[list[str]],
    run_in_thread: Callable[[Intake], threading.Thread],
) -> None:
    # The MULTI after the read is lost: the entries stay pending on this consumer, and a read of
    # new entries (">") would never see them again; reclaiming waits for claim_idle.
    run_in_thread(make_intake(claim_idle=3600.0, clock=time.time))
    publish(any_redis, event("e1"), event("e2"))
    wait_for(lambda: len(sent.jobs) == 2)

    assert multi_fails, "the first MULTI failed"
    assert [event_id for batch in sent.ids for event_id in batch] == ["e1", "e2"]
    assert pending(any_redis) == 0


def test_a_paused_intake_takes_nothing(
    any_redis: redis.Redis,
    make_intake: MakeIntake,
    sent: Sent,
    run_in_thread: Callable[[Intake], threading.Thread],
) -> None:
    paused = threading.Event()
    paused.set()
    run_in_thread(make_intake(paused=paused.is_set, clock=time.time))
    publish(any_redis, event("e1"))
    time.sleep(0.3)
    assert sent.batches == []

    paused.clear()
    wait_for(lambda: sent.ids == [["e1"]])


# --- the consumer group ------------------------------------------------------------------------


def test_ensure_group_is_idempotent(any_redis: redis.Redis, intake: Intake) -> None:
    intake.ensure_group()
    intake.ensure_group()

    groups: Any = any_redis.xinfo_groups(EVENTS)
    assert [group["name"] for group in groups] == [GROUP]


def test_lag_counts_the_entries_the_group_has_not_read(
    any_redis: redis.Redis, make_intake: MakeIntake
) -> None:
    intake = make_intake(batch=2)
    publish(any_redis, *(event(f"e{n}") for n in range(5)))
    intake.poll()

    assert intake.lag() == 3


def test_a_consumer_leaving_with_nothing_pending_is_removed_from_the_group(
    any_redis: redis.Redis, intake: Intake
) -> None:
    publish(any_redis, event("e1"))
    intake.poll()

    intake.leave()

    consumers: Any = any_redis.xinfo_consumers(EVENTS, GROUP)
    assert consumers == []


def test_a_consumer_holding_pending_entries_stays_in_the_group(
    any_redis: redis.Redis, make_intake: MakeIntake
) -> None:
    publish(any_redis, event("e1"))
    read_as(any_redis, "worker-1")

    make_intake("worker-1").leave()

    consumers: Any = any_redis.xinfo_consumers(EVENTS, GROUP)
    assert [consumer["name"] for consumer in consumers] == ["worker-1"]


@pytest.mark.parametrize("name", ["casesync", "unacked", "_kombu.binding.casesync"])
def test_an_entry_replying_to_a_key_celery_uses_is_dead_lettered_and_the_key_left_alone(
    any_redis: redis.Redis, intake: Intake, sent: Sent, name: str
) -> None:
    publish(any_redis, event("bad", replyto=name), event("ok"))

    intake.poll()

    assert sent.ids == [["ok"]]
    [letter] = dead_letters(any_redis)
    assert letter["reason"] == "invalidEvent"
    assert "replyto" in letter["detail"]
    assert [o["data"]["requestId"] for o in outcomes(any_redis)] == ["bad"]
    assert any_redis.exists(name) == 0
    assert pending(any_redis) == 0


def test_an_entry_from_the_future_is_dead_lettered_by_intakes_clock(
    any_redis: redis.Redis, make_intake: MakeIntake, sent: Sent
) -> None:
    publish(any_redis, event("future"))  # 2026-11-28T10:15:00Z
    an_hour_before = make_intake(clock=lambda: 1_795_857_300.0)

    an_hour_before.poll()

    assert sent.batches == []
    [letter] = dead_letters(any_redis)
    assert "CASESYNC_MAX_CLOCK_SKEW" in letter["detail"]


def test_a_dead_letters_reply_key_that_is_not_a_stream_does_not_stop_intake(
    any_redis: redis.Redis, intake: Intake, sent: Sent
) -> None:
    any_redis.hset("billing:results", "field", "value")
    publish(any_redis, "{}", event("e2", replyto="billing:results", type="x"), event("e3"))

    assert intake.poll() == 3

    assert sent.ids == [["e3"]]
    assert pending(any_redis) == 0
    assert len(dead_letters(any_redis)) == 2
    assert len(outcomes(any_redis)) == 2
    assert any_redis.type("billing:results") == "hash"


# --- the trace ---------------------------------------------------------------------------------


def trace_records(client: redis.Redis, case_id: int = 12345) -> list[dict[str, Any]]:
    """The case's trace as stored, oldest first."""
    texts: Any = client.lrange(trace.case_key(case_id), 0, -1)
    return [json.loads(text) for text in reversed(texts)]


def test_each_entry_taken_is_recorded_as_arrived_with_its_event_indexed_to_its_case(
    any_redis: redis.Redis, intake: Intake, clock: Clock
) -> None:
    ids = publish(any_redis, event("e1"), event("e2", case_id=7))

    intake.poll()

    assert trace_records(any_redis) == [
        {
            "t": clock.now,
            "step": "arrived",
            "entry": ids[0],
            "source": "urn:example:billing",
            "id": "e1",
            "eventTime": "2026-11-28T10:15:00Z",
            "comments": 0,
            "caseDataFields": 0,
        }
    ]
    assert [record["id"] for record in trace_records(any_redis, 7)] == ["e2"]
    assert any_redis.get(trace.event_key("urn:example:billing", "e1")) == "12345"
    assert any_redis.get(trace.event_key("urn:example:billing", "e2")) == "7"


def test_an_invalid_entry_naming_its_case_is_recorded_with_its_dead_letter(
    any_redis: redis.Redis, intake: Intake
) -> None:
    no_code = json.loads(event("e2"))
    del no_code["data"]["typeCode"]
    [entry_id] = publish(any_redis, json.dumps(no_code))
    publish(any_redis, "{broken")  # names no case: no trace

    intake.poll()

    arrived, ended = trace_records(any_redis)
    assert (arrived["step"], arrived["entry"], arrived["valid"]) == ("arrived", entry_id, False)
    assert (ended["outcome"], ended["reason"], ended["attempts"]) == (
        "deadlettered",
        "CodeRequired",
        0,
    )
    assert sorted(any_redis.keys("casesync:trace:case:*")) == ["casesync:trace:case:12345"]


def test_the_trace_is_written_in_the_multi_that_leases_the_entries(
    any_redis: redis.Redis, intake: Intake, multi_fails: list[list[str]]
) -> None:
    publish(any_redis, event("e1"))

    with pytest.raises(redis.ConnectionError):
        intake.poll()

    [commands] = multi_fails
    assert {"LPUSH", "LTRIM", "EXPIRE", "SET", "XACK"} <= set(commands)
    assert any_redis.keys("casesync:trace:*") == []


def test_a_poison_entry_is_recorded_with_its_dead_letter(
    any_redis: redis.Redis, make_intake: MakeIntake
) -> None:
    [entry_id] = publish(any_redis, event("poison"))
    deliver(any_redis, 2)
    intake = make_intake(claim_idle=0.01)
    time.sleep(0.05)

    intake.reclaim()

    assert [(r["entry"], r["step"], r.get("reason")) for r in trace_records(any_redis)] == [
        (entry_id, "arrived", None),
        (entry_id, "outcome", "poisonEvent"),
    ]


def test_with_tracing_off_intake_records_nothing(
    any_redis: redis.Redis, make_intake: MakeIntake
) -> None:
    publish(any_redis, event("e1"), "{broken")

    make_intake(trace=trace.Bounds(length=0)).poll()

    assert any_redis.keys("casesync:trace:*") == []
