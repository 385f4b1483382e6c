"""How the pipeline is doing, read from Redis: backlog, workers, schedule, dead letters, breaker,
and whether Redis takes writes.

Plain code over a Redis client that decodes responses, behind ``casesync status`` (and replay's
pacing): :func:`read_health` takes one snapshot, :func:`problems` judges it, so a Docker health
check and a person see the same verdict; :func:`sample_drain` measures how fast the backlog goes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from core.redis_faults import probe_writes
from core.schedule import Schedule, Waiting
from ops.dead_letters import count_by_reason
from ops.stream_ids import id_after
from settings import Settings, keys

#: Entries of the schedule listed with their due times.
DUE_LISTED = 5

#: Most dead letters read to count them by reason; older ones are left out of the counts.
DEAD_LETTERS_COUNTED = 50_000

#: Most unread entries counted when the server cannot give the group's lag.
LAG_COUNTED = 100_000

#: Most pending entries read for their idle times (the first by id, those delivered first).
#: Intake hands an entry on in the MULTI that acknowledges it, so few are ever pending.
PENDING_READ = 1_000


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
    #: Longest a pending entry may sit since it was last delivered (read or claimed) to a
    #: consumer without being handed on. Not its age: an old entry read just now is fine.
    max_pending_idle: float = 300.0


@dataclass(frozen=True)
class Worker:
    name: str
    idle: float
    pending: int
    alive: bool


@dataclass(frozen=True)
class Drain:
    """How the backlog moved over a short sample: entries that arrived on the events stream,
    outcomes written to the results stream (each event ends in exactly one)."""

    seconds: float
    arrived: int
    ended: int

    @property
    def arriving_per_second(self) -> float:
        return self.arrived / self.seconds

    @property
    def ending_per_second(self) -> float:
        return self.ended / self.seconds

    @property
    def draining_per_second(self) -> float:
        """Net: negative while the backlog grows."""
        return (self.ended - self.arrived) / self.seconds

    def empty_in(self, backlog: int) -> float | None:
        """Seconds until ``backlog`` is gone at this rate; None while it does not shrink."""
        rate = self.draining_per_second
        return backlog / rate if rate > 0 else None


@dataclass(frozen=True)
class Health:
    events_length: int
    group_exists: bool
    #: Entries of the events stream not yet delivered to the group.
    lag: int
    #: Entries delivered to a worker and not yet handed on (acknowledged).
    pending: int
    #: Seconds the longest-waiting pending entry has sat since it was last delivered.
    longest_pending_idle: float | None
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
    #: How fast the backlog went over a sample; None when not sampled or the server cannot say.
    drain: Drain | None = None
    #: Why Redis refused a probe write (full, read-only...); None when it took it.
    redis_refuses_writes: str | None = None

    @property
    def backlog(self) -> int:
        """Every entry not yet ended: unread, pending, in flight, waiting on the schedule."""
        return self.lag + self.pending + self.in_flight + self.scheduled

    def as_json(self) -> dict[str, Any]:
        shown = asdict(self)
        shown["backlog"] = self.backlog
        shown["next_due"] = [{_camel(k): v for k, v in asdict(w).items()} for w in self.next_due]
        shown["drain"] = None if self.drain is None else _drain_json(self.drain, self.backlog)
        return {_camel(name): value for name, value in shown.items()}


def read_health(client: redis.Redis, watched: Watched, thresholds: Thresholds) -> Health:
    """One snapshot of the pipeline's state."""
    group = _group_info(client, watched.events, watched.group)
    lag = 0 if group is None else _lag(client, watched.events, group)
    pending, idle = (0, None) if group is None else _pending(client, watched)
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
        longest_pending_idle=idle,
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
        redis_refuses_writes=_refused_writes(client),
    )


def _refused_writes(client: redis.Redis) -> str | None:
    """Redis may answer every read and refuse every write: only a write tells."""
    refusal = probe_writes(client)
    return None if refusal is None else refusal.reason


def problems(health: Health, thresholds: Thresholds) -> list[str]:
    """What makes the pipeline unhealthy, one sentence each; empty when it is healthy."""
    found = []
    if health.redis_refuses_writes is not None:
        found.append(f"Redis refuses writes: {health.redis_refuses_writes}")
    if health.breaker_open is not None:
        found.append(f"the circuit breaker is open: {health.breaker_open}")
    if health.backlog and not any(worker.alive for worker in health.workers):
        found.append(f"no worker is alive and {health.backlog} entries wait")
    idle = health.longest_pending_idle
    if idle is not None and idle > thresholds.max_pending_idle:
        found.append(
            f"a pending entry was read {idle:.0f} s ago and not handed on "
            f"(over {thresholds.max_pending_idle:g} s)"
        )
    return found


def sample_drain(
    client: redis.Redis,
    watched: Watched,
    seconds: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Drain | None:
    """Count, over ``seconds``, the entries added to the events stream and the outcomes added
    to the results stream; None when the server keeps no such counts (before Redis 7).

    The streams' ``entries-added`` counters, not their lengths: trimming the results stream
    or deleting entries does not move them.
    """
    before, started = _added(client, watched), clock()
    sleep(seconds)
    after, ended = _added(client, watched), clock()
    if before is None or after is None or ended <= started:
        return None
    arrived, finished = after[0] - before[0], after[1] - before[1]
    if arrived < 0 or finished < 0:  # a stream deleted and made again meanwhile
        return None
    return Drain(ended - started, arrived=arrived, ended=finished)


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


def _pending(client: redis.Redis, watched: Watched) -> tuple[int, float | None]:
    """How many entries are pending, and the longest any of them has sat since it was last
    delivered (XPENDING's extended form, bounded to :data:`PENDING_READ` entries)."""
    summary: Any = client.xpending(watched.events, watched.group)
    count = int(summary.get("pending") or 0)
    if not count:
        return 0, None
    entries: Any = client.xpending_range(
        watched.events, watched.group, min="-", max="+", count=PENDING_READ
    )
    idle = [int(entry["time_since_delivered"]) for entry in entries]
    return count, max(idle) / 1000 if idle else None


def _added(client: redis.Redis, watched: Watched) -> tuple[int, int] | None:
    """The events and results streams' ``entries-added`` counters (0 for a stream not there)."""
    counts = []
    for stream in (watched.events, watched.results):
        try:
            info: Any = client.xinfo_stream(stream)
        except redis.ResponseError:  # no such stream yet: nothing was ever added
            counts.append(0)
            continue
        if info.get("entries-added") is None:
            return None
        counts.append(int(info["entries-added"]))
    return counts[0], counts[1]


def _drain_json(drain: Drain, backlog: int) -> dict[str, Any]:
    return {
        "sampleSeconds": round(drain.seconds, 3),
        "arrived": drain.arrived,
        "ended": drain.ended,
        "arrivingPerSecond": round(drain.arriving_per_second, 2),
        "endingPerSecond": round(drain.ending_per_second, 2),
        "drainingPerSecond": round(drain.draining_per_second, 2),
        "emptyInSeconds": _rounded(drain.empty_in(backlog)),
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


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
