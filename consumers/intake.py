"""Intake: events stream and schedule -> batches of jobs, through a consumer group.

Each worker runs one :class:`Intake`. While the task queue has room it first moves what the
schedule has due (retries, busy cases, leases that ran out) and then reads new entries; each read
becomes one batch, handed on as one task. An invalid entry is dead-lettered at once. A valid one is
leased in the schedule in the same MULTI that acknowledges it, before its task is sent, so from
then on the schedule answers for it: if the task is lost, its lease runs out and it comes back.
Entries left pending by a consumer that died before that MULTI are claimed by the others; one
delivered too often is a poison event.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from core import outcomes, trace
from core.events import InvalidEvent, Limits, identity, parse_entry
from core.outcomes import DeadLetterRecord, Outcome, Reply, Streams, log_outcome
from core.redis_faults import WriteRefusals
from core.schedule import Job, Schedule

log = logging.getLogger("casesync.intake")

POISON_EVENT = "poisonEvent"


@dataclass(frozen=True)
class IntakeConfig:
    stream: str
    group: str
    consumer: str
    queue: str
    batch: int = 100
    #: Tasks waiting in the queue past which intake takes nothing.
    backlog: int = 4
    #: Longest a read waits for new entries; shorter when the schedule has an entry due sooner.
    block_ms: int = 200
    #: Seconds between looks at the schedule, unless its last answer said something falls due
    #: sooner: retries that other workers schedule are picked up within this.
    schedule_check: float = 0.05
    max_deliveries: int = 5
    claim_idle: float = 60.0
    limits: Limits = field(default_factory=Limits)
    trace: trace.Bounds = trace.DEFAULT_BOUNDS


#: Sends one task carrying these jobs (the Celery side passes it in).
HandOn = Callable[[Sequence[Job]], None]


class Intake:
    """Moves entries from the events stream and the schedule to tasks, for one consumer."""

    def __init__(
        self,
        client: redis.Redis,
        config: IntakeConfig,
        streams: Streams,
        schedule: Schedule,
        hand_on: HandOn,
        *,
        paused: Callable[[], bool] = lambda: False,
        report_lag: Callable[[int], None] = lambda lag: None,
        refusals: WriteRefusals | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = client
        self._config = config
        self._streams = streams
        self._schedule = schedule
        self._hand_on = hand_on
        self._paused = paused
        self._report_lag = report_lag
        self._refusals = refusals or WriteRefusals(clock=time.monotonic)
        self._clock = clock
        # After a start or an error, this consumer's own pending entries are read first.
        self._own_pending_first = True
        #: When the schedule's next entry falls due (epoch s), as its last move said.
        self._next_due: float | None = None
        #: When to look at the schedule again (epoch s).
        self._next_look = 0.0
        #: Entries this intake may have leased without sending their task (Redis failed under
        #: it), with a bound on their leases (epoch s): given back at the next round.
        self._unsent: dict[str, float] = {}

    def ensure_group(self) -> None:
        """Create the consumer group (and the stream) unless they exist."""
        try:
            self._redis.xgroup_create(
                self._config.stream, self._config.group, id="0", mkstream=True
            )
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def lag(self) -> int:
        """Entries of the stream the group has not read yet (0 where the server cannot tell)."""
        groups: Any = self._redis.xinfo_groups(self._config.stream)
        for group in groups:
            if group.get("name") == self._config.group:
                return int(group.get("lag") or 0)
        return 0

    def room(self) -> int:
        """How many entries may be taken now: a batch while the task queue has room, else 0."""
        queued = int(self._redis.llen(self._config.queue))
        return self._config.batch if queued < self._config.backlog else 0

    def poll(self) -> int:
        """Hand on what the schedule has due, then one batch of new entries; how many taken."""
        room = self.room()
        if room == 0:
            return 0
        self._give_back_unsent()
        moved = self.move_due(room) if self._clock() >= self._next_look else 0
        if moved >= room:
            return moved
        room -= moved
        if self._own_pending_first:
            # After a start or an error: entries this consumer read but did not hand on.
            entries = self._read("0", room, block=None)
            self._own_pending_first = len(entries) == room
            if entries:
                return moved + self.take(entries)
        block = None if moved else self._block_ms()
        return moved + self.take(self._read(">", room, block=block))

    def move_due(self, most: int) -> int:
        """Hand on the schedule's due entries: retries, waits, and leases that ran out."""
        now = self._clock()
        taken = self._schedule.take_due(now, most)
        self._next_due = taken.next_due
        # A full move may have left more due: look again at once.
        self._next_look = now if len(taken.jobs) >= most else self._look_after(now)
        fresh = sorted((job for job in taken.jobs if not job.lost), key=_stream_order)
        # An entry whose worker died may be what killed it: it goes alone, so it can only
        # take itself down again, never the events it happened to share a batch with.
        batches = [[job] for job in taken.jobs if job.lost] + ([fresh] if fresh else [])
        self._send(batches)
        if taken.lost_now:
            log.warning("handed on again %d entries whose lease ran out", taken.lost_now)
        return len(taken.jobs)

    def _look_after(self, now: float) -> float:
        later = now + self._config.schedule_check
        return later if self._next_due is None else min(later, self._next_due)

    def _block_ms(self) -> int:
        until = int((self._next_look - self._clock()) * 1000)
        return max(1, min(self._config.block_ms, until))

    def _read(
        self, start: str, count: int, block: int | None
    ) -> list[tuple[str, dict[str, str] | None]]:
        reply: Any = self._redis.xreadgroup(
            self._config.group,
            self._config.consumer,
            {self._config.stream: start},
            count=count,
            block=block,
        )
        return list(reply[0][1]) if reply else []

    def take(self, entries: Sequence[tuple[str, dict[str, str] | None]]) -> int:
        """Lease the valid entries and dead-letter the others, acknowledging them all in the
        same MULTI; then send the leased ones as one task."""
        if not entries:
            return 0
        now = self._clock()
        jobs: list[Job] = []
        invalid: list[tuple[str, InvalidEvent]] = []
        records: list[trace.Record] = []
        for entry_id, fields in entries:
            if fields is None:  # deleted from the stream while pending: nothing to apply
                continue
            try:
                event = parse_entry(fields, self._config.limits, now=now)
            except InvalidEvent as exc:
                invalid.append((entry_id, exc))
            else:
                jobs.append(Job(entry_id, fields["event"]))
                records.append(trace.arrived(entry_id, event, now))
        pipe = self._redis.pipeline(transaction=True)
        self._schedule.add_leased(pipe, jobs, now)
        replies: list[Reply] = []
        for entry_id, problem in invalid:
            record = DeadLetterRecord(problem.raw, None, entry_id)
            outcome = outcomes.of_invalid(problem)
            replies += outcomes.add_dead_letter(pipe, self._streams, outcome, record, now)
            records += _traced_dead_letter(entry_id, outcome, now)
        trace.add(pipe, self._config.trace, records)
        pipe.xack(self._config.stream, self._config.group, *[entry_id for entry_id, _ in entries])
        try:
            pipe.execute()
        except redis.RedisError:
            # The MULTI may have run with only its reply lost: then its entries are leased and
            # acknowledged, and no task has them.
            self._give_back_later(job.entry_id for job in jobs)
            raise
        outcomes.send_replies(self._redis, self._streams, replies)
        for _, problem in invalid:
            log_outcome(outcomes.of_invalid(problem))
        if jobs:
            self._send([jobs])
        return len(entries)

    def _send(self, batches: list[list[Job]]) -> None:
        """Send one task per batch; if one fails, make its jobs and the rest due again at once
        (else they would wait out their leases and count as lost)."""
        for sent, batch in enumerate(batches):
            try:
                self._hand_on(batch)
            except Exception:
                unsent = [job.entry_id for rest in batches[sent:] for job in rest]
                self._give_back_later(unsent)  # should Redis refuse this too
                self._schedule.retry_at(unsent, self._clock())
                for entry_id in unsent:
                    del self._unsent[entry_id]
                raise

    def _give_back_later(self, entry_ids: Iterable[str]) -> None:
        """Make these entries due at the next round that reaches Redis, not a whole lease later.

        Their leases were taken before now, so each runs out before the bound recorded here; one
        that ran out and went to another worker was taken after that, and is left alone.
        """
        bound = self._clock() + self._schedule.lease
        self._unsent.update(dict.fromkeys(entry_ids, bound))

    def _give_back_unsent(self) -> None:
        if not self._unsent:
            return
        now = self._clock()
        # A lease that ran out meanwhile is handed on by move_due anyway.
        give_back = [(entry_id, bound) for entry_id, bound in self._unsent.items() if bound > now]
        self._schedule.give_back(give_back, now)
        self._unsent.clear()
        self._next_look = now

    def reclaim(self) -> int:
        """Claim entries idle on dead consumers; dead-letter those delivered too often."""
        reply: Any = self._redis.xautoclaim(
            self._config.stream,
            self._config.group,
            self._config.consumer,
            min_idle_time=int(self._config.claim_idle * 1000),
            start_id="0-0",
            count=self._config.batch,
        )
        claimed: list[tuple[str, dict[str, str] | None]] = reply[1]
        if not claimed:
            return 0
        deliveries = self._deliveries([entry_id for entry_id, _ in claimed])
        poison = [e for e in claimed if deliveries.get(e[0], 0) > self._config.max_deliveries]
        healthy = [e for e in claimed if deliveries.get(e[0], 0) <= self._config.max_deliveries]
        self._dead_letter_poison(poison, deliveries)
        return self.take(healthy) + len(poison)

    def _deliveries(self, entry_ids: list[str]) -> dict[str, int]:
        pending: Any = self._redis.xpending_range(
            self._config.stream,
            self._config.group,
            min=entry_ids[0],
            max=entry_ids[-1],
            count=len(entry_ids) * 2,
            consumername=self._config.consumer,
        )
        return {item["message_id"]: int(item["times_delivered"]) for item in pending}

    def _dead_letter_poison(
        self, entries: list[tuple[str, dict[str, str] | None]], deliveries: dict[str, int]
    ) -> None:
        if not entries:
            return
        now = self._clock()
        limits = self._config.limits
        pipe = self._redis.pipeline(transaction=True)
        replies: list[Reply] = []
        records: list[trace.Record] = []
        for entry_id, fields in entries:
            raw = (fields or {}).get("event", "")
            detail = (
                f"the entry was delivered {deliveries[entry_id]} times without being handed on "
                f"(CASESYNC_MAX_DELIVERIES={self._config.max_deliveries}): it may crash workers"
            )
            outcome = _poison_outcome(raw, detail, limits)
            record = DeadLetterRecord(raw, None, entry_id)
            replies += outcomes.add_dead_letter(pipe, self._streams, outcome, record, now)
            records += _traced_dead_letter(entry_id, outcome, now)
            pipe.xack(self._config.stream, self._config.group, entry_id)
        trace.add(pipe, self._config.trace, records)
        pipe.execute()
        outcomes.send_replies(self._redis, self._streams, replies)
        for entry_id, fields in entries:
            raw = (fields or {}).get("event", "")
            log_outcome(_poison_outcome(raw, f"entry {entry_id}", limits))

    def run(
        self,
        stop: threading.Event,
        idle_wait: float = 0.005,
        paused_wait: float = 0.5,
        refused_wait: float = 0.5,
    ) -> None:
        """Read until ``stop`` is set; failures are logged and waited out, never fatal.

        ``idle_wait`` is the pause after a turn that took nothing: the queue was full (a read
        waits by itself otherwise), so it is short, or entries wait that long for room. While
        Redis refuses writes, intake takes nothing and probes every ``refused_wait`` instead.
        """
        next_claim = 0.0
        failures = 0
        while not stop.is_set():
            try:
                if not self._refusals.writable(self._redis, "intake"):
                    stop.wait(refused_wait)
                    continue
                if self._paused():
                    stop.wait(paused_wait)
                    continue
                if self._clock() >= next_claim:
                    self.ensure_group()
                    self.reclaim()
                    self._report_lag(self.lag())
                    next_claim = self._clock() + self._config.claim_idle / 2
                if self.poll() == 0:
                    stop.wait(idle_wait)
                failures = 0
            except Exception as exc:
                # Redis or the broker (enqueue) unreachable, or a bug: the entries stay pending and
                # are read again. The thread must outlive it, or this node stops taking events.
                self._own_pending_first = True
                if self._refusals.report(exc, "intake"):
                    # Said once for the process; the probe above tells when it ends.
                    stop.wait(refused_wait)
                    continue
                failures += 1
                wait = min(10.0, 0.1 * 2**failures)
                unexpected = not isinstance(exc, redis.RedisError)
                log.warning("intake: %r; retrying in %.1f s", exc, wait, exc_info=unexpected)
                stop.wait(wait)

    def leave(self) -> None:
        """Remove this consumer from the group if it holds no pending entries."""
        try:
            pending: Any = self._redis.xpending_range(
                self._config.stream,
                self._config.group,
                min="-",
                max="+",
                count=1,
                consumername=self._config.consumer,
            )
            if not pending:
                self._redis.xgroup_delconsumer(
                    self._config.stream, self._config.group, self._config.consumer
                )
        except redis.RedisError as exc:
            log.warning("intake: could not leave the consumer group: %s", exc)


def _stream_order(job: Job) -> tuple[int, ...]:
    return tuple(int(part) for part in job.entry_id.split("-") if part.isdigit())


def _traced_dead_letter(entry_id: str, outcome: Outcome, now: float) -> list[trace.Record]:
    """The trace of an entry intake dead-lettered at once: none when it names no case."""
    subject = trace.subject_of(outcome, entry_id)
    if subject is None:
        return []
    return [trace.arrived_invalid(subject, now), trace.outcome(subject, now, outcome)]


def _poison_outcome(raw: str, detail: str, limits: Limits) -> Outcome:
    partial = identity(raw, limits)
    return outcomes.of_invalid(InvalidEvent(POISON_EVENT, detail, raw=raw, partial=partial))
