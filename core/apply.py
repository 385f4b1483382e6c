"""Applying a batch of case-change events to Thalamus: plain code, no Celery, no stream.

:meth:`BatchApplier.apply` takes the jobs of one task. One script call takes the locks of all
their cases; each case's events then run in stream order, different cases at once on the
executor passed in; outcomes, dead letters, retries and the guards' state are written as cases
finish, one MULTI for all that finished together (at most one per ``flush_interval``). Retries
and waits go back to the schedule in Redis: nothing waits in a worker's memory.

Its collaborators (Redis client, Thalamus client, executor, clock) are passed in, so a test
drives it with fakeredis or a real server and ``httpx.MockTransport``.
"""

from __future__ import annotations

import logging
import queue
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, wait
from dataclasses import dataclass, field, replace

import redis

from core import outcomes, trace
from core.events import CaseChangeEvent, InvalidEvent, Limits, parse_event
from core.guards import BreakerOpen, CaseHold, EventKeys, EventState, Guards, lock_key, order_key
from core.outcomes import DeadLetterRecord, Outcome, Streams
from core.redis_faults import WriteRefusals
from core.retry_policy import DeadLetter, Retry, RetryPolicy, busy_delay, decide
from core.schedule import Job, LeaseKeeper, Schedule
from thalamus.client import ThalamusClient
from thalamus.errors import OutcomeUnknown, SessionExpired, ThalamusError
from thalamus.models import Case, CaseUpdate, Comment

log = logging.getLogger("casesync.apply")

POISON_EVENT = "poisonEvent"

#: How far the clocks of Redis and Thalamus may disagree when comments are matched by time.
CLOCK_MARGIN_MS = 120_000


class _Untouched:
    """The attempt mark is left as it is: the task did not hold the event's case."""


UNTOUCHED = _Untouched()

#: After an event: the mark's ``since`` to keep (a result is still unknown), None to clear it.
MarkAfter = int | None | _Untouched


@dataclass(frozen=True)
class Finished:
    """The event's outcome, written with its ledger entry and order key."""

    job: Job
    outcome: Outcome
    mark: MarkAfter
    ledger: bool = False
    newest: str = ""
    #: The attempt that ended the event, for its trace (None when it ended without one).
    tried: trace.Attempt | None = None
    #: The order key of the newer change that superseded the event.
    superseded_by: str = ""


@dataclass(frozen=True)
class Rescheduled:
    """The event goes back to the schedule, due after ``delay`` seconds."""

    job: Job
    delay: float
    mark: MarkAfter
    #: One of trace.RETRY, BUSY_CASE, BREAKER, REDIS_FAULT.
    why: str
    #: The attempt that failed (why RETRY), for the event's trace.
    tried: trace.Attempt | None = None
    #: The class of the error that made it wait, when not an attempt's (a Redis fault).
    error: str | None = None


@dataclass(frozen=True)
class AlreadyDone:
    """An earlier delivery of the entry wrote its outcome: nothing more to write."""

    job: Job


EventEnd = Finished | Rescheduled | AlreadyDone


@dataclass(frozen=True)
class _Item:
    job: Job
    event: CaseChangeEvent
    keys: EventKeys


@dataclass
class CaseRun:
    """One case's events as a task ran them; ``held`` when it had the case's lock."""

    case_id: int
    held: bool
    newest: str
    ends: list[EventEnd]
    #: The guard keys of each end's event (None for an event that could not be read).
    keys: Sequence[EventKeys | None]


@dataclass
class BatchReport:
    """How a batch ended: counts by outcome, and a line per dead-lettered event."""

    counts: Counter[str] = field(default_factory=Counter)
    dead_lettered: list[str] = field(default_factory=list)

    def add(self, end: EventEnd) -> None:
        if isinstance(end, Rescheduled):
            self.counts["retrying"] += 1
        elif isinstance(end, AlreadyDone):
            self.counts["alreadyDone"] += 1
        else:
            outcome = end.outcome
            self.counts[outcome.type.removeprefix("casesync.update.")] += 1
            if outcome.type == outcomes.DEADLETTERED:
                self.dead_lettered.append(
                    f"{outcome.request_source}/{outcome.request_id} (entry {end.job.entry_id}): "
                    f"{outcome.reason}: {outcome.detail}"
                )


class BatchApplier:
    """Carries the events of one task to Thalamus under the guards of :mod:`core.guards`."""

    def __init__(
        self,
        *,
        redis_client: redis.Redis,
        thalamus: ThalamusClient,
        guards: Guards,
        schedule: Schedule,
        keeper: LeaseKeeper,
        executor: Executor,
        streams: Streams,
        policy: RetryPolicy,
        limits: Limits,
        max_deliveries: int,
        breaker_tripped: Callable[[], bool] = lambda: False,
        on_session_refused: Callable[[str], None] = lambda reason: None,
        trace_bounds: trace.Bounds = trace.DEFAULT_BOUNDS,
        flush_interval: float = 0.01,
        refusals: WriteRefusals | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis_client
        self._thalamus = thalamus
        self._guards = guards
        self._schedule = schedule
        self._keeper = keeper
        self._executor = executor
        self._streams = streams
        self._policy = policy
        self._limits = limits
        self._max_deliveries = max_deliveries
        self._breaker_tripped = breaker_tripped
        self._on_session_refused = on_session_refused
        self._trace = trace_bounds
        self._flush_interval = flush_interval
        self._refusals = refusals or WriteRefusals(clock=time.monotonic)
        self._clock = clock

    def apply(self, jobs: Sequence[Job]) -> BatchReport:
        """Apply ``jobs``; every one ends written: an outcome, or back on the schedule."""
        report = BatchReport()
        items, invalid = self._parse(jobs)
        cases = _by_case(items)
        token = uuid.uuid4().hex
        unwritten = {item.job.entry_id for item in items}
        locks: set[tuple[str, str]] = set()
        self._keeper.hold(unwritten)
        try:
            if invalid:
                self._write([CaseRun(0, False, "", invalid, [None] * len(invalid))], token, report)
            if not cases:
                return report
            # Until the answer comes, every lock tried counts as taken: should the answer be
            # lost, they are given back like the rest, not left to run out.
            locks = {(lock_key(case_id), token) for case_id, _ in cases}
            holds = self._guards.acquire(
                [(case_id, [item.keys for item in group]) for case_id, group in cases], token
            )
            held = [] if isinstance(holds, BreakerOpen) else [h for h in holds if h.held]
            locks.intersection_update((lock_key(hold.case_id), token) for hold in held)
            self._keeper.hold((), locks)

            def write(runs: list[CaseRun]) -> None:
                written = self._write(runs, token, report)
                freed = {(lock_key(run.case_id), token) for run in runs if run.held}
                self._keeper.release(written, freed)
                unwritten.difference_update(written)
                locks.difference_update(freed)

            self._run(cases, holds, write)
        except redis.RedisError:
            self._give_back(unwritten, locks)
            raise
        finally:
            # Whatever was not written stops being renewed: its leases and locks run out.
            self._keeper.release(unwritten, locks)
        return report

    def _parse(self, jobs: Sequence[Job]) -> tuple[list[_Item], list[EventEnd]]:
        items: list[_Item] = []
        invalid: list[EventEnd] = []
        for job in jobs:
            try:
                event = parse_event(job.raw_event, self._limits, now=self._clock())
            except InvalidEvent as problem:
                # Valid at intake, so the limits changed since: it still ends as a dead letter.
                invalid.append(Finished(job, outcomes.of_invalid(problem, job.attempts), None))
                continue
            items.append(_Item(job, event, EventKeys.of(event.source, event.id, job.entry_id)))
        return items, invalid

    def _run(
        self,
        cases: list[tuple[int, list[_Item]]],
        holds: list[CaseHold] | BreakerOpen,
        write: Callable[[list[CaseRun]], None],
    ) -> None:
        """Run every case, handing ``write`` the runs that finished together."""
        if isinstance(holds, BreakerOpen):
            write([self._wait_for_breaker(case_id, group) for case_id, group in cases])
            return
        work = list(zip(holds, (group for _, group in cases), strict=True))
        if len(work) == 1:
            write([self._run_case(*work[0])])
            return
        futures = [self._executor.submit(self._run_case, *each) for each in work]
        try:
            # Monotonic: a step of the wall clock must not hold outcomes back.
            _as_they_finish(futures, self._flush_interval, time.monotonic, write)
        finally:
            # Leave only once no case is still being sent: after a failed write the caller
            # frees the unwritten cases, and a PUT still out must not race the next task's.
            for future in futures:
                future.cancel()
            wait(futures)

    def _wait_for_breaker(self, case_id: int, group: list[_Item]) -> CaseRun:
        wait = self._policy.breaker_wait
        ends: list[EventEnd] = [
            Rescheduled(item.job, wait, UNTOUCHED, trace.BREAKER) for item in group
        ]
        return CaseRun(case_id, False, "", ends, [item.keys for item in group])

    def _run_case(self, hold: CaseHold, group: list[_Item]) -> CaseRun:
        keys = [item.keys for item in group]
        if not hold.held:
            # One wait for the whole group: its events come back due together, so they take
            # the case again as one group, however many a flood of the case brings.
            delay = busy_delay(max(item.job.waits for item in group), self._policy)
            pairs = zip(group, hold.events, strict=True)
            busy = [self._busy(item, state, delay) for item, state in pairs]
            return CaseRun(hold.case_id, False, "", busy, keys)
        newest = hold.newest
        ends: list[EventEnd] = []
        remembered: set[str] = set()
        for item, state in zip(group, hold.events, strict=True):
            if item.keys.ledger in remembered:
                # The same event twice in one batch: the first one's ledger entry is not
                # written yet, but it counts.
                state = replace(state, ledger=outcomes.APPLIED)
            end = self._run_event(item, state, newest)
            if isinstance(end, Finished) and end.ledger:
                remembered.add(item.keys.ledger)
                newest = max(newest, end.newest)
            ends.append(end)
        return CaseRun(hold.case_id, True, newest, ends, keys)

    def _busy(self, item: _Item, state: EventState, delay: float) -> EventEnd:
        if state.done:
            return AlreadyDone(item.job)
        job = replace(item.job, waits=item.job.waits + 1)
        return Rescheduled(job, delay, UNTOUCHED, trace.BUSY_CASE)

    def _run_event(self, item: _Item, state: EventState, newest: str) -> EventEnd:
        """One event of a held case: an outcome, or a time to try again."""
        job, event = replace(item.job, waits=0), item.event
        if state.done:
            return AlreadyDone(job)
        if state.ledger:
            return Finished(job, _outcome(event, outcomes.DUPLICATE, job), None)
        kept = state.since_ms if state.outcome_unknown else None
        if job.lost >= self._max_deliveries:
            return self._poison(job, event, state)
        if self._breaker_tripped():
            return Rescheduled(job, self._policy.breaker_wait, kept, trace.BREAKER)
        if not self._keeper.locks_confirmed():
            # Redis has not renewed the case's lock lately: it may have run out and gone to
            # another task. Send nothing more under it; the event waits instead.
            return Rescheduled(job, self._policy.fault_wait, kept, trace.REDIS_FAULT)
        started = self._clock()
        first = job.first_attempt_at if job.first_attempt_at is not None else started
        job = replace(job, attempts=job.attempts + 1, first_attempt_at=first)
        tried = trace.Attempt(job.attempts, started)
        try:
            return self._attempt(job, event, state, newest, tried)
        except redis.RedisError as exc:
            # Redis failed under a hook (session, rate cap): a fault of casesync's, not the
            # event's. It waits, spending nothing; the case is read first if a PUT went out.
            if not self._refusals.report(exc, "an update"):  # a refusal is said once
                log.warning("event %s/%s waits for Redis: %s", event.source, event.id, exc)
            job = replace(job, attempts=job.attempts - 1)
            wait = self._policy.fault_wait
            return Rescheduled(job, wait, state.since_ms, trace.REDIS_FAULT, error=_name(exc))
        except Exception as exc:
            # A bug must not take the batch's other events with it. This one is retried like a
            # lost answer (its case read first), spending its budget, so an event that always
            # hits the bug ends as retriesExhausted naming it rather than looping.
            log.exception("event %s/%s failed unexpectedly", event.source, event.id)
            unexpected = OutcomeUnknown(f"unexpected error: {type(exc).__name__}: {exc}")
            unexpected.__cause__ = exc
            return self._failed(job, event, state, unexpected, tried)

    def _poison(self, job: Job, event: CaseChangeEvent, state: EventState) -> EventEnd:
        detail = (
            f"the update was cut off {job.lost} times by its worker dying or freezing "
            f"(CASESYNC_MAX_DELIVERIES={self._max_deliveries})"
        )
        outcome = replace(
            _outcome(event, outcomes.DEADLETTERED, job, reason=POISON_EVENT), detail=detail
        )
        # Whether its last attempt took effect is unknown: a replay reads the case first.
        return Finished(job, outcome, state.since_ms)

    def _attempt(
        self,
        job: Job,
        event: CaseChangeEvent,
        state: EventState,
        newest: str,
        tried: trace.Attempt,
    ) -> EventEnd:
        key = order_key(event.time, job.entry_id)
        superseded = bool(newest) and newest > key
        winner = newest if superseded else ""
        try:
            current = self._read_case_if_needed(event, state, superseded)
        except ThalamusError as error:
            # Not read back: an earlier attempt's result stays unknown.
            if state.outcome_unknown:
                tried = replace(tried, read_back=trace.READ_FAILED)
            return self._failed(job, event, state, error, tried, read_back=False)
        if state.outcome_unknown and current is not None:
            if _took_effect(event, current, state):
                log.info("event %s/%s had already taken effect", event.source, event.id)
                tried = replace(tried, read_back=trace.TOOK_EFFECT)
                return self._took_effect(job, event, state, current, key, superseded, tried)
            tried = replace(tried, read_back=trace.NOT_APPLIED)
        plan = _plan(event, current, superseded)
        if plan.update is None:
            outcome = _outcome(event, plan.outcome_type, job)
            return Finished(job, outcome, None, ledger=True, superseded_by=winner)
        try:
            case = self._thalamus.update_case(event.case_id, plan.update)
        except ThalamusError as error:
            return self._failed(job, event, state, error, tried)
        tried = replace(tried, http_status=201)
        return replace(
            _applied(job, event, plan.outcome_type, case, key, tried), superseded_by=winner
        )

    def _took_effect(
        self,
        job: Job,
        event: CaseChangeEvent,
        state: EventState,
        current: Case,
        key: str,
        superseded: bool,
        tried: trace.Attempt,
    ) -> EventEnd:
        """An update whose answer was lost did land: report it applied, its state set again
        if an older change was applied since (its order key was never written to stop it)."""
        own = None if superseded else _plan(event, current, superseded=False).update
        if own is not None and _state_differs(own, current):
            again = own.model_copy(update={"comments": None})
            try:
                current = self._thalamus.update_case(event.case_id, again)
            except ThalamusError as error:
                # Its comments are on the case: the mark stays, so they are never sent again.
                return self._failed(job, event, state, error, tried, read_back=False)
        return _applied(job, event, outcomes.APPLIED, current, key, tried)

    def _read_case_if_needed(
        self, event: CaseChangeEvent, state: EventState, superseded: bool
    ) -> Case | None:
        """One GET serves all three needs: a lost answer, a partial caseData, a superseded event."""
        data = event.data
        needs = state.outcome_unknown or (
            bool(data.comments) if superseded else data.caseData is not None
        )
        return self._thalamus.get_case(event.case_id) if needs else None

    def _failed(
        self,
        job: Job,
        event: CaseChangeEvent,
        state: EventState,
        error: ThalamusError,
        tried: trace.Attempt,
        *,
        read_back: bool = True,
    ) -> EventEnd:
        assert job.first_attempt_at is not None
        decision = decide(
            error,
            attempts=job.attempts,
            first_attempt_at=job.first_attempt_at,
            now=self._clock(),
            policy=self._policy,
        )
        if isinstance(error, SessionExpired):
            # Refused even after a fresh login: the configuration is at fault, not the event.
            self._on_session_refused(error.detail)
        unknown = isinstance(error, OutcomeUnknown) or (state.outcome_unknown and not read_back)
        mark = state.since_ms if unknown else None
        tried = tried.failed(error)
        if isinstance(decision, Retry):
            if not decision.spends_budget:
                job = replace(job, attempts=max(0, job.attempts - 1))
            log.info(
                "event %s/%s: %s; retry in %.2f s", event.source, event.id, error, decision.delay
            )
            return Rescheduled(job, decision.delay, mark, trace.RETRY, tried)
        return Finished(job, _dead_outcome(event, job, decision), mark, tried=tried)

    def _write(self, runs: list[CaseRun], token: str, report: BatchReport) -> set[str]:
        """One MULTI for the ends of ``runs``: outcomes, dead letters, schedule, guards, locks.

        The entry ids written.
        """
        now = self._clock()
        pipe = self._redis.pipeline(transaction=True)
        replies: list[outcomes.Reply] = []
        records: list[trace.Record] = []
        for run in runs:
            for ek, end in zip(run.keys, run.ends, strict=True):
                replies += self._add_end(pipe, end, ek, now)
                if self._trace.on:
                    records += _traced(end, ek, run.case_id, now)
            if run.held:
                self._guards.add_release(pipe, run.case_id, token, run.newest)
        trace.add(pipe, self._trace, records)
        pipe.execute()
        # The results stream is the record; the copies to reply streams are best-effort.
        outcomes.send_replies(self._redis, self._streams, replies)
        for run in runs:
            for end in run.ends:
                report.add(end)
                if isinstance(end, Finished):
                    outcomes.log_outcome(end.outcome)
        return {end.job.entry_id for run in runs for end in run.ends}

    def _add_end(
        self, pipe: redis.client.Pipeline, end: EventEnd, ek: EventKeys | None, now: float
    ) -> list[outcomes.Reply]:
        """Queue an event's end into the MULTI; the copies of its outcome still to send."""
        job = end.job
        replies: list[outcomes.Reply] = []
        if isinstance(end, Rescheduled):
            self._schedule.add_retry(pipe, job, now + end.delay)
        else:
            self._schedule.add_finished(pipe, job.entry_id)
        if isinstance(end, Finished):
            if end.outcome.type == outcomes.DEADLETTERED:
                record = DeadLetterRecord(job.raw_event, job.first_attempt_at or now, job.entry_id)
                replies = outcomes.add_dead_letter(pipe, self._streams, end.outcome, record, now)
            else:
                replies = outcomes.add_outcome(pipe, self._streams, end.outcome, now)
        if ek is None or isinstance(end, AlreadyDone) or isinstance(end.mark, _Untouched):
            return replies
        ledger = end.outcome.type if isinstance(end, Finished) and end.ledger else None
        self._guards.add_event_end(pipe, ek, ledger_value=ledger, mark_since=end.mark)
        return replies

    def _give_back(self, entry_ids: set[str], locks: set[tuple[str, str]]) -> None:
        """After a Redis failure: the unwritten entries wait ``fault_wait`` and the cases are
        freed. Marks stay, so a PUT that went out is read back first.

        If Redis refuses that too, the lease keeper does both at its first round that reaches
        Redis again: nothing is sent under these locks any more (``_run`` waited for every
        case), so giving back later is as safe as now, and neither the entries nor the cases
        need wait for their leases and locks to run out.
        """
        try:
            self._schedule.retry_at(entry_ids, self._clock() + self._policy.fault_wait)
            self._guards.release(locks)
        except redis.RedisError as exc:
            self._keeper.give_back_later(entry_ids)
            self._keeper.free_later(locks)
            log.warning(
                "%d entries and %d cases will be given back once Redis answers: %s",
                len(entry_ids),
                len(locks),
                exc,
            )


def _as_they_finish(
    futures: list[Future[CaseRun]],
    interval: float,
    clock: Callable[[], float],
    write: Callable[[list[CaseRun]], None],
) -> None:
    """Hand ``write`` the futures' results in groups: all that finished within ``interval``
    of the first.

    One callback per future feeds a queue; ``concurrent.futures.wait`` in a loop would hang a
    waiter on every pending future at each turn, quadratic in the batch.
    """
    finished: queue.SimpleQueue[Future[CaseRun]] = queue.SimpleQueue()
    for future in futures:
        future.add_done_callback(finished.put)
    ready: list[CaseRun] = []
    left, oldest = len(futures), 0.0
    while left:
        timeout = None if not ready else max(0.0, oldest + interval - clock())
        try:
            future = finished.get(timeout=timeout)
        except queue.Empty:
            pass
        else:
            left -= 1
            oldest = oldest if ready else clock()
            ready.append(future.result())
        if ready and (not left or clock() >= oldest + interval):
            write(ready)
            ready = []


def _by_case(items: list[_Item]) -> list[tuple[int, list[_Item]]]:
    """The items grouped by case, each group in stream order, the groups by first appearance."""
    groups: dict[int, list[_Item]] = {}
    for item in items:
        groups.setdefault(item.event.case_id, []).append(item)
    return list(groups.items())


@dataclass(frozen=True)
class _Plan:
    """What an attempt sends: ``update`` None means nothing needs sending."""

    outcome_type: str
    update: CaseUpdate | None


def _plan(event: CaseChangeEvent, current: Case | None, superseded: bool) -> _Plan:
    """The request of this attempt: the whole change, or only its comments when superseded."""
    data = event.data
    if not superseded:
        update = data.update()
        if data.caseData is not None and current is not None:
            # The API wants every field of the case type: complete a partial caseData from the
            # case's current values, the event's own values winning.
            merged = {**current.caseData, **data.caseData}
            update = update.model_copy(update={"caseData": merged})
        return _Plan(outcomes.APPLIED, update)
    if not data.comments or current is None:
        return _Plan(outcomes.SUPERSEDED, None)
    # A newer change already set the state: send the case's own codes and only these comments.
    comments_only = CaseUpdate(
        categoryCode=current.categoryCode or data.categoryCode,
        typeCode=current.typeCode or data.typeCode,
        comments=[Comment(description=c.description) for c in data.comments],
    )
    return _Plan(outcomes.SUPERSEDED, comments_only)


def _took_effect(event: CaseChangeEvent, case: Case, state: EventState) -> bool:
    """Whether a PUT whose answer was lost did land: each of this event's comments is on the
    case, created no earlier than the attempt that lost its answer began.

    An event without comments is safe to send again, so it counts as not applied. Comments are
    matched by text among those created since the attempt began (less a margin for the clocks of
    Redis and Thalamus); a comment of the same text that another system adds to the case in that
    time is the window that remains (README, "Exactly-once and order").
    """
    wanted = Counter(comment.description for comment in event.data.comments or [])
    if not wanted:
        return False
    since = state.since_ms - CLOCK_MARGIN_MS
    recent = Counter(
        comment.description
        for comment in case.comments
        if comment.creationDate is None or comment.creationDate >= since
    )
    return all(recent[text] >= count for text, count in wanted.items())


def _state_differs(update: CaseUpdate, case: Case) -> bool:
    """Whether the case no longer shows the state ``update`` sets (a date read back as a
    timestamp counts as differing: setting it again is harmless)."""
    for name in ("categoryCode", "typeCode", "status", "resolution"):
        wanted = getattr(update, name)
        if wanted is not None and wanted != getattr(case, name):
            return True
    wanted_data = update.caseData or {}
    return any(str(case.caseData.get(key)) != str(value) for key, value in wanted_data.items())


def _applied(
    job: Job, event: CaseChangeEvent, kind: str, case: Case, key: str, tried: trace.Attempt
) -> Finished:
    outcome = _outcome(event, kind, job, http_status=201, case=case.model_dump(mode="json"))
    return Finished(job, outcome, None, ledger=True, newest=key, tried=tried)


def _traced(end: EventEnd, ek: EventKeys | None, case_id: int, now: float) -> list[trace.Record]:
    """The trace record of an event's end: none for one an earlier delivery finished, or for an
    unreadable event that names no case."""
    if isinstance(end, AlreadyDone):
        return []
    if isinstance(end, Rescheduled):
        assert ek is not None  # only a readable event goes back to the schedule
        waiting = trace.Subject(case_id, end.job.entry_id, ek.source, ek.event_id)
        why, delay, tried, error = end.why, end.delay, end.tried, end.error
        return [trace.rescheduled(waiting, now, why=why, delay=delay, tried=tried, error=error)]
    ended = trace.subject_of(end.outcome, end.job.entry_id)
    if ended is None:
        return []
    by = end.superseded_by
    return [trace.outcome(ended, now, end.outcome, superseded_by=by, tried=end.tried)]


def _name(error: BaseException) -> str:
    return type(error).__name__


def _outcome(event: CaseChangeEvent, kind: str, job: Job, **details: object) -> Outcome:
    return Outcome(
        type=kind,
        request_id=event.id,
        request_source=event.source,
        case_id=event.case_id,
        attempts=job.attempts,
        replyto=event.replyto,
        **details,  # type: ignore[arg-type]
    )


def _dead_outcome(event: CaseChangeEvent, job: Job, decision: DeadLetter) -> Outcome:
    return _outcome(
        event,
        outcomes.DEADLETTERED,
        job,
        reason=decision.reason,
        detail=decision.detail,
        http_status=decision.http_status,
        errors=decision.errors or None,
    )
