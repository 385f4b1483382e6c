"""How the pipeline is doing, read from Redis: backlog, workers, schedule, dead letters, breaker.

Plain code over a Redis client that decodes responses, behind ``casesync status`` (and replay's
pacing): :func:`read_health` takes one
snapshot, :func:`problems` judges it, so a Docker health check and a person see the same verdict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from core.schedule import Schedule, Waiting
from ops.dead_letters import count_by_reason
from ops.stream_ids import entry_millis, id_after
from settings import Settings, keys

#: Entries of the schedule listed with their due times.
DUE_LISTED = 5

#: Most dead letters read to count them by reason; older ones are left out of the counts.
DEAD_LETTERS_COUNTED = 50_000

#: Most unread entries counted when the server cannot give the group's lag.
LAG_COUNTED = 100_000


@dataclass(frozen=True)
class Watched:
    """The streams, group and queue a status reads."""

    events: str
    group: str
    queue: str
    results: str
    dead_letter: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Watched:
        return cls(
            events=settings.events_stream,
            group=settings.consumer_group,
            queue=settings.task_queue,
            results=settings.results_stream,
            dead_letter=settings.dead_letter_stream,
        )


@dataclass(frozen=True)
class Thresholds:
    """Bounds past which the pipeline counts as unhealthy."""

    #: A consumer of the group that touched the stream this recently is a live worker. Intake
    #: reads every second and reclaims every ``claim_idle / 2`` even when the queue is full.
    alive_idle: float = 120.0
    #: Oldest pending entry (by the time it was added to the stream) that is still fine.
    max_pending_age: float = 300.0


@dataclass(frozen=True)
class Worker:
    name: str
    idle: float
    pending: int
    alive: bool


@dataclass(frozen=True)
class Health:
    events_length: int
    group_exists: bool
    #: Entries of the events stream not yet delivered to the group.
    lag: int
    #: Entries delivered to a worker and not yet handed on (acknowledged).
    pending: int
    oldest_pending_age: float | None
    #: Tasks in the queue, not yet taken by a worker (each carries a batch of entries).
    queue_depth: int
    #: Entries a task holds a lease on: in its queue or being applied.
    in_flight: int
    #: Entries waiting on the schedule for a retry, a busy case or the breaker.
    scheduled: int
    #: The next entries due on the schedule, soonest first.
    next_due: list[Waiting]
    results_length: int
    dead_letter_length: int
    dead_letters_by_reason: dict[str, int]
    #: True when the counts by reason cover only the newest dead letters.
    dead_letters_partly_counted: bool
    breaker_open: str | None
    workers: list[Worker] = field(default_factory=list)

    @property
    def backlog(self) -> int:
        return self.lag + self.pending + self.in_flight + self.scheduled

    def as_json(self) -> dict[str, Any]:
        shown = asdict(self)
        shown["backlog"] = self.backlog
        shown["next_due"] = [{_camel(k): v for k, v in asdict(w).items()} for w in self.next_due]
        return {_camel(name): value for name, value in shown.items()}


def read_health(
    client: redis.Redis, watched: Watched, thresholds: Thresholds, now: float
) -> Health:
    """One snapshot of the pipeline's state (``now`` in epoch seconds)."""
    group = _group_info(client, watched.events, watched.group)
    lag = 0 if group is None else _lag(client, watched.events, group)
    pending, oldest = (0, None) if group is None else _pending(client, watched, now)
    by_reason, partly = count_by_reason(client, watched.dead_letter, most=DEAD_LETTERS_COUNTED)
    pipe = client.pipeline(transaction=False)
    for stream in (watched.events, watched.results, watched.dead_letter):
        pipe.xlen(stream)
    pipe.llen(watched.queue)
    pipe.get(keys.BREAKER_OPEN)
    events, results, dead, depth, breaker = pipe.execute()
    # The lease does not matter for reading; the schedule only lists what waits.
    in_flight, scheduled, next_due = Schedule(client, lease=0).waiting(DUE_LISTED)
    return Health(
        events_length=int(events),
        group_exists=group is not None,
        # Without a group no worker ever read the stream: every entry is unread.
        lag=lag if group is not None else int(events),
        pending=pending,
        oldest_pending_age=oldest,
        queue_depth=int(depth),
        in_flight=in_flight,
        scheduled=scheduled,
        next_due=next_due,
        results_length=int(results),
        dead_letter_length=int(dead),
        dead_letters_by_reason=dict(by_reason.most_common()),
        dead_letters_partly_counted=partly,
        breaker_open=None if breaker is None else str(breaker),
        workers=[] if group is None else _workers(client, watched, thresholds),
    )


def problems(health: Health, thresholds: Thresholds) -> list[str]:
    """What makes the pipeline unhealthy, one sentence each; empty when it is healthy."""
    found = []
    if health.breaker_open is not None:
        found.append(f"the circuit breaker is open: {health.breaker_open}")
    if health.backlog and not any(worker.alive for worker in health.workers):
        found.append(f"no worker is alive and {health.backlog} entries wait")
    age = health.oldest_pending_age
    if age is not None and age > thresholds.max_pending_age:
        found.append(
            f"the oldest pending entry is {age:.0f} s old (over {thresholds.max_pending_age:g} s)"
        )
    return found


def backlog(client: redis.Redis, stream: str, group: str) -> int:
    """Entries of ``stream`` the group's workers have not handed on: unread plus pending."""
    info = _group_info(client, stream, group)
    if info is None:
        return int(client.xlen(stream))
    return _lag(client, stream, info) + int(info.get("pending") or 0)


def _group_info(client: redis.Redis, stream: str, group: str) -> dict[str, Any] | None:
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:  # no such stream yet
        return None
    return next((info for info in groups if info.get("name") == group), None)


def _lag(client: redis.Redis, stream: str, group: dict[str, Any]) -> int:
    lag = group.get("lag")
    if lag is not None:
        return int(lag)
    # Before Redis 7, or after entries were deleted from the stream, the server cannot say:
    # count the entries after the last one delivered to the group, up to a bound.
    last = str(group.get("last-delivered-id") or "0-0")
    unread: Any = client.xrange(stream, min=id_after(last), max="+", count=LAG_COUNTED)
    return len(unread or [])


def _pending(client: redis.Redis, watched: Watched, now: float) -> tuple[int, float | None]:
    summary: Any = client.xpending(watched.events, watched.group)
    count = int(summary.get("pending") or 0)
    oldest = summary.get("min")
    if not count or not oldest:
        return count, None
    return count, max(0.0, now - entry_millis(str(oldest)) / 1000)


def _workers(client: redis.Redis, watched: Watched, thresholds: Thresholds) -> list[Worker]:
    consumers: Any = client.xinfo_consumers(watched.events, watched.group)
    workers = []
    for consumer in consumers:
        idle = int(consumer.get("idle") or 0) / 1000
        workers.append(
            Worker(
                name=str(consumer.get("name")),
                idle=idle,
                pending=int(consumer.get("pending") or 0),
                alive=idle < thresholds.alive_idle,
            )
        )
    return workers


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)
