"""Applying one case-change event to Thalamus: plain code, no Celery.

:meth:`EventApplier.apply` takes a :class:`Job` (the event and its retry state) and either writes
the event's outcome or answers :class:`RetryLater`. Its collaborators (Redis client, Thalamus
client, clock) are passed in, so a test drives it with fakeredis and ``httpx.MockTransport``.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import redis

from consumers.events import CaseChangeEvent, InvalidEvent, Limits, parse_event
from settings import keys
from tasks import metrics, outcomes
from tasks.guards import Busy, Done, EventKeys, Guards, Held, order_key
from tasks.outcomes import DeadLetterRecord, Outcome, Streams
from tasks.retry_policy import DeadLetter, Retry, RetryPolicy, decide
from thalamus.client import ThalamusClient
from thalamus.errors import OutcomeUnknown, SessionExpired, ThalamusError
from thalamus.models import Case, CaseUpdate, Comment

log = logging.getLogger("casesync.apply")

POISON_EVENT = "poisonEvent"

#: How far the clocks of Redis and Thalamus may disagree when comments are matched by time.
CLOCK_MARGIN_MS = 120_000

#: Wait for a busy case this long at most before handing the event back to the queue.
LOCK_RETRY_DELAY = 0.05


@dataclass(frozen=True)
class Job:
    """An event on its way through the update task, with what its retries must remember."""

    raw_event: str
    entry_id: str
    attempts: int = 0  # attempts that spent the retry budget
    first_attempt_at: float | None = None


@dataclass(frozen=True)
class RetryLater:
    delay: float
    job: Job


@dataclass(frozen=True)
class Finished:
    """The outcome written, or None when an earlier delivery of the entry had written it."""

    outcome: Outcome | None


Result = Finished | RetryLater


@dataclass(frozen=True)
class _Plan:
    """What an attempt sends: ``update`` None means nothing needs sending."""

    outcome_type: str
    update: CaseUpdate | None


class EventApplier:
    """Carries one event to Thalamus under the guards of :mod:`tasks.guards`."""

    def __init__(
        self,
        *,
        redis_client: redis.Redis,
        thalamus: ThalamusClient,
        guards: Guards,
        streams: Streams,
        policy: RetryPolicy,
        limits: Limits,
        max_deliveries: int,
        on_session_refused: Callable[[str], None] = lambda reason: None,
        breaker_wait: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis_client
        self._thalamus = thalamus
        self._guards = guards
        self._streams = streams
        self._policy = policy
        self._limits = limits
        self._max_deliveries = max_deliveries
        self._on_session_refused = on_session_refused
        self._breaker_wait = breaker_wait
        self._clock = clock

    def apply(self, job: Job) -> Result:
        try:
            event = parse_event(job.raw_event, self._limits, now=self._clock())
        except InvalidEvent as invalid:
            outcome = outcomes.of_invalid(invalid, job.attempts)
            return self._finish_dead(job, outcome, None, None)
        ek = EventKeys.of(event.source, event.id, event.case_id, job.entry_id)
        held = self._guards.acquire(ek, uuid.uuid4().hex)
        if isinstance(held, Done):
            log.info("entry %s was delivered again after its outcome; ignored", job.entry_id)
            return Finished(None)
        if isinstance(held, Busy):
            # Waiting for a busy case or for Thalamus to come back does not spend the budget.
            delay = self._breaker_wait if held.breaker else LOCK_RETRY_DELAY * (1 + random.random())
            return RetryLater(delay, job)
        try:
            return self._apply_held(job, event, ek, held)
        except redis.RedisError:
            # The outcome could not be written: give the case back now rather than when the
            # lock expires, keeping the mark so the next attempt reads the case first.
            with contextlib.suppress(redis.RedisError):
                self._release(ek, held, unknown_after=held)
            raise

    def _apply_held(self, job: Job, event: CaseChangeEvent, ek: EventKeys, held: Held) -> Result:
        if held.ledger:
            return self._finish(ek, held, _outcome(event, outcomes.DUPLICATE, job))
        if held.deaths >= self._max_deliveries:
            detail = (
                f"the update was cut off {held.deaths} times by its worker dying "
                f"(CASESYNC_MAX_DELIVERIES={self._max_deliveries})"
            )
            outcome = _outcome(event, outcomes.DEADLETTERED, job, reason=POISON_EVENT)
            return self._finish_dead(job, replace(outcome, detail=detail), ek, held)
        first = job.first_attempt_at if job.first_attempt_at is not None else self._clock()
        job = replace(job, attempts=job.attempts + 1, first_attempt_at=first)
        newest = order_key(event.time, job.entry_id)
        superseded = bool(held.newest) and held.newest > newest
        try:
            return self._attempt(job, event, ek, held, newest, superseded)
        except ThalamusError as error:
            return self._failed(job, event, ek, held, error)

    def _attempt(
        self,
        job: Job,
        event: CaseChangeEvent,
        ek: EventKeys,
        held: Held,
        newest: str,
        superseded: bool,
    ) -> Result:
        current = self._read_case_if_needed(event, held, superseded)
        if held.outcome_unknown and current is not None and _took_effect(event, current, held):
            log.info("event %s/%s had already taken effect", event.source, event.id)
            return self._finish_applied(job, event, ek, held, outcomes.APPLIED, current, newest)
        plan = _plan(event, current, superseded)
        if plan.update is None:
            outcome = _outcome(event, plan.outcome_type, job)
            return self._finish(ek, held, outcome, ledger=True)
        case = self._thalamus.update_case(event.case_id, plan.update)
        return self._finish_applied(job, event, ek, held, plan.outcome_type, case, newest)

    def _read_case_if_needed(
        self, event: CaseChangeEvent, held: Held, superseded: bool
    ) -> Case | None:
        """One GET serves all three needs: a lost answer, a partial caseData, a superseded event."""
        data = event.data
        needs = held.outcome_unknown or (
            bool(data.comments) if superseded else data.caseData is not None
        )
        return self._thalamus.get_case(event.case_id) if needs else None

    def _failed(
        self, job: Job, event: CaseChangeEvent, ek: EventKeys, held: Held, error: ThalamusError
    ) -> Result:
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
        unknown_after = held if isinstance(error, OutcomeUnknown) else None
        if isinstance(decision, Retry):
            if not decision.spends_budget:
                job = replace(job, attempts=max(0, job.attempts - 1))
            self._release(ek, held, unknown_after)
            log.info(
                "event %s/%s: %s; retry in %.2f s", event.source, event.id, error, decision.delay
            )
            return RetryLater(decision.delay, job)
        outcome = _dead_outcome(event, job, decision)
        return self._finish_dead(job, outcome, ek, held, unknown_after)

    def _finish_applied(
        self,
        job: Job,
        event: CaseChangeEvent,
        ek: EventKeys,
        held: Held,
        kind: str,
        case: Case,
        newest: str,
    ) -> Result:
        outcome = _outcome(event, kind, job, http_status=201, case=case.model_dump(mode="json"))
        return self._finish(ek, held, outcome, ledger=True, newest=newest)

    def _finish(
        self,
        ek: EventKeys,
        held: Held,
        outcome: Outcome,
        *,
        ledger: bool = False,
        newest: str = "",
    ) -> Result:
        now = self._clock()
        pipe = self._redis.pipeline(transaction=True)
        replies = outcomes.add_outcome(pipe, self._streams, outcome, now)
        # A duplicate leaves the ledger as it is: its first outcome is the one remembered.
        ledger_value = outcome.type if ledger else None
        self._guards.add_finish(pipe, ek, held.token, ledger_value=ledger_value, newest=newest)
        pipe.execute()
        outcomes.send_replies(self._redis, self._streams, replies)
        log_outcome(outcome)
        return Finished(outcome)

    def _finish_dead(
        self,
        job: Job,
        outcome: Outcome,
        ek: EventKeys | None,
        held: Held | None,
        unknown_after: Held | None = None,
    ) -> Result:
        now = self._clock()
        record = DeadLetterRecord(job.raw_event, job.first_attempt_at or now, job.entry_id)
        pipe = self._redis.pipeline(transaction=True)
        replies = outcomes.add_dead_letter(pipe, self._streams, outcome, record, now)
        if ek is not None and held is not None:
            self._guards.add_finish(pipe, ek, held.token, unknown_after=unknown_after)
        else:
            pipe.zrem(keys.INFLIGHT, job.entry_id)
        pipe.execute()
        outcomes.send_replies(self._redis, self._streams, replies)
        log_outcome(outcome)
        return Finished(outcome)

    def _release(self, ek: EventKeys, held: Held, unknown_after: Held | None) -> None:
        pipe = self._redis.pipeline(transaction=True)
        self._guards.add_finish(
            pipe, ek, held.token, unknown_after=unknown_after, outcome_written=False
        )
        pipe.execute()


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


def _took_effect(event: CaseChangeEvent, case: Case, held: Held) -> bool:
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
    since = held.since_ms - CLOCK_MARGIN_MS
    recent = Counter(
        comment.description
        for comment in case.comments
        if comment.creationDate is None or comment.creationDate >= since
    )
    return all(recent[text] >= count for text, count in wanted.items())


def _outcome(event: CaseChangeEvent, kind: str, job: Job, **details: Any) -> Outcome:
    return Outcome(
        type=kind,
        request_id=event.id,
        request_source=event.source,
        case_id=event.case_id,
        attempts=job.attempts,
        replyto=event.replyto,
        **details,
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


def log_outcome(outcome: Outcome) -> None:
    """One line per outcome, the same fields as text and as JSON (CASESYNC_LOG_JSON)."""
    metrics.count_outcome(outcome.type, outcome.reason)
    log.info(
        "outcome %s event=%s/%s case=%s attempts=%d reason=%s",
        outcome.type.removeprefix("casesync.update."),
        outcome.request_source,
        outcome.request_id,
        outcome.case_id,
        outcome.attempts,
        outcome.reason or "-",
        extra={
            "outcome": outcome.type,
            "event_id": outcome.request_id,
            "event_source": outcome.request_source,
            "case_id": outcome.case_id,
            "attempts": outcome.attempts,
            "reason": outcome.reason,
        },
    )
