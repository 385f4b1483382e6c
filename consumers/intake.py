"""Intake: events stream -> update tasks, through a consumer group.

Each worker runs one :class:`Intake`. It reads only as many entries as the task queue has room
for, turns each valid entry into one task, dead-letters an invalid one at once, and acknowledges
an entry only after its task is safely enqueued or its dead letter written. Entries left pending
by a consumer that died are claimed by the others; one delivered too often is a poison event.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from consumers.events import CaseChangeEvent, InvalidEvent, Limits, identity, parse_entry
from settings import keys
from tasks import outcomes
from tasks.apply import log_outcome
from tasks.outcomes import DeadLetterRecord, Outcome, Reply, Streams

log = logging.getLogger("casesync.intake")

POISON_EVENT = "poisonEvent"

# KEYS: in-flight set. ARGV: cutoff ms, now ms, most. Takes the entries silent since before the
# cutoff and marks them alive now, in one step, so two workers never hand on the same entry.
_CLAIM_STALE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], ARGV[2], id)
end
return ids
"""


@dataclass(frozen=True)
class Accepted:
    """A valid entry, ready to become a task."""

    entry_id: str
    raw: str
    event: CaseChangeEvent


@dataclass(frozen=True)
class IntakeConfig:
    stream: str
    group: str
    consumer: str
    queue: str
    batch: int = 100
    backlog: int = 64
    block_ms: int = 1000
    max_deliveries: int = 5
    claim_idle: float = 60.0
    #: Seconds an in-flight entry's task may stay silent before its entry is handed on again.
    lost_after: float = 3600.0
    limits: Limits = field(default_factory=Limits)


Enqueue = Callable[[Sequence[Accepted]], None]


class Intake:
    """Moves entries from the events stream to the task queue for one consumer."""

    def __init__(
        self,
        client: redis.Redis,
        config: IntakeConfig,
        streams: Streams,
        enqueue: Enqueue,
        *,
        paused: Callable[[], bool] = lambda: False,
        report_lag: Callable[[int], None] = lambda lag: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = client
        self._config = config
        self._streams = streams
        self._enqueue = enqueue
        self._paused = paused
        self._report_lag = report_lag
        self._clock = clock
        # After a start or an error, this consumer's own pending entries are read first.
        self._own_pending_first = True
        self._claim_stale = client.register_script(_CLAIM_STALE)

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
        """How many entries may be read now without overfilling the task queue."""
        queued = int(self._redis.llen(self._config.queue))
        return max(0, min(self._config.batch, self._config.backlog - queued))

    def poll(self) -> int:
        """Read and hand on one batch; the number of entries taken (0 when none or no room)."""
        room = self.room()
        if room == 0:
            return 0
        if self._own_pending_first:
            # After a start or an error: entries this consumer read but did not hand on.
            entries = self._read("0", room, block=None)
            self._own_pending_first = len(entries) == room
            if entries:
                return self.take(entries)
        return self.take(self._read(">", room, block=self._config.block_ms))

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
        """Enqueue the valid entries, dead-letter the others, then acknowledge them all."""
        if not entries:
            return 0
        now = self._clock()
        accepted: list[Accepted] = []
        invalid: list[tuple[str, InvalidEvent]] = []
        for entry_id, fields in entries:
            if fields is None:  # deleted from the stream while pending: nothing to apply
                continue
            try:
                event = parse_entry(fields, self._config.limits, now=now)
            except InvalidEvent as exc:
                invalid.append((entry_id, exc))
            else:
                accepted.append(Accepted(entry_id, fields["event"], event))
        if accepted:
            self._enqueue(accepted)
        pipe = self._redis.pipeline(transaction=True)
        if accepted:
            pipe.zadd(keys.INFLIGHT, {item.entry_id: int(now * 1000) for item in accepted})
        replies: list[Reply] = []
        for entry_id, problem in invalid:
            record = DeadLetterRecord(problem.raw, None, entry_id)
            outcome = outcomes.of_invalid(problem)
            replies += outcomes.add_dead_letter(pipe, self._streams, outcome, record, now)
        pipe.xack(self._config.stream, self._config.group, *[entry_id for entry_id, _ in entries])
        pipe.execute()
        outcomes.send_replies(self._redis, self._streams, replies)
        for _, problem in invalid:
            log_outcome(outcomes.of_invalid(problem))
        return len(entries)

    def recover_lost(self) -> int:
        """Hand on again the entries whose task went silent (its message lost by the broker)."""
        now = self._clock()
        reply: Any = self._claim_stale(
            keys=[keys.INFLIGHT],
            args=[int((now - self._config.lost_after) * 1000), int(now * 1000), self._config.batch],
        )
        entry_ids = [str(entry_id) for entry_id in reply]
        if not entry_ids:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        for entry_id in entry_ids:
            pipe.xrange(self._config.stream, entry_id, entry_id)
        accepted: list[Accepted] = []
        for entry_id, found in zip(entry_ids, pipe.execute(), strict=True):
            fields = found[0][1] if found else None
            try:
                event = parse_entry(fields or {}, self._config.limits, now=now)
            except InvalidEvent:
                self._redis.zrem(keys.INFLIGHT, entry_id)  # trimmed away: nothing to hand on
                continue
            accepted.append(Accepted(entry_id, fields["event"], event))  # type: ignore[index]
        if accepted:
            self._enqueue(accepted)
            log.warning("handed on again %d entries whose task went silent", len(accepted))
        return len(accepted)

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
        for entry_id, fields in entries:
            raw = (fields or {}).get("event", "")
            detail = (
                f"the entry was delivered {deliveries[entry_id]} times without being handed on "
                f"(CASESYNC_MAX_DELIVERIES={self._config.max_deliveries}): it may crash workers"
            )
            outcome = _poison_outcome(raw, detail, limits)
            record = DeadLetterRecord(raw, None, entry_id)
            replies += outcomes.add_dead_letter(pipe, self._streams, outcome, record, now)
            pipe.xack(self._config.stream, self._config.group, entry_id)
        pipe.execute()
        outcomes.send_replies(self._redis, self._streams, replies)
        for entry_id, fields in entries:
            raw = (fields or {}).get("event", "")
            log_outcome(_poison_outcome(raw, f"entry {entry_id}", limits))

    def run(self, stop: threading.Event, idle_wait: float = 0.05) -> None:
        """Read until ``stop`` is set; failures are logged and waited out, never fatal."""
        next_claim = 0.0
        failures = 0
        while not stop.is_set():
            try:
                if self._paused():
                    stop.wait(idle_wait * 10)
                    continue
                if self._clock() >= next_claim:
                    self.ensure_group()
                    self.reclaim()
                    self.recover_lost()
                    self._report_lag(self.lag())
                    next_claim = self._clock() + self._config.claim_idle / 2
                if self.poll() == 0:
                    stop.wait(idle_wait)
                failures = 0
            except Exception as exc:
                # Redis or the broker (enqueue) unreachable, or a bug: the entries stay pending and
                # are read again. The thread must outlive it, or this node stops taking events.
                failures += 1
                self._own_pending_first = True
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


def _poison_outcome(raw: str, detail: str, limits: Limits) -> Outcome:
    partial = identity(raw, limits)
    return outcomes.of_invalid(InvalidEvent(POISON_EVENT, detail, raw=raw, partial=partial))
