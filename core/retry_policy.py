"""When an event is tried again, and whether that spends its budget: the one retry policy.

:func:`decide` answers after a failed call: retry in N seconds, or dead-letter with a reason; a
pure function of (error, attempts so far, first-attempt time, policy, now), tested as a table
without Celery or Redis. :func:`busy_delay` answers for a case another task holds; the breaker's
wait and the back-off after a fault of casesync's own (Redis, a bug) are fields of the policy.
The batch applier carries out each answer by putting the event on the schedule.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from thalamus.errors import NotSent, PermanentError, SessionExpired, ThalamusError, TransientError

RETRIES_EXHAUSTED = "retriesExhausted"


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    max_age: float = 86400.0
    base_delay: float = 1.0
    max_delay: float = 300.0
    #: While the breaker is open, events wait this long (the probe interval), spending nothing.
    breaker_wait: float = 5.0
    #: After Redis failed or a bug broke a batch: its events wait this long, spending nothing.
    fault_wait: float = 2.0
    #: The first and the longest wait for a case another task is updating; spends nothing.
    busy_base: float = 0.05
    busy_max: float = 2.0


@dataclass(frozen=True)
class Retry:
    """Try again after ``delay`` seconds; ``spends_budget`` False for faults not of the event."""

    delay: float
    spends_budget: bool = True


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    detail: str
    http_status: int | None = None
    errors: dict[str, Any] | None = None


Decision = Retry | DeadLetter


def decide(
    error: ThalamusError,
    *,
    attempts: int,
    first_attempt_at: float,
    now: float,
    policy: RetryPolicy,
    jitter: Callable[[], float] = random.random,
) -> Decision:
    """The next step after ``error`` ended attempt number ``attempts`` (1-based)."""
    if isinstance(error, PermanentError):
        return DeadLetter(error.code, error.detail, error.http_status, error.errors)
    if isinstance(error, SessionExpired):
        # A 401 that outlived a fresh login is a fault of the configuration, not of the event:
        # wait (the breaker holds intake) without spending the event's budget.
        return Retry(policy.max_delay / 10, spends_budget=False)
    if isinstance(error, NotSent):
        return Retry(min(policy.max_delay, error.retry_after or policy.base_delay), False)
    retry_after = error.retry_after if isinstance(error, TransientError) else None
    delay = backoff(attempts, policy, jitter, retry_after)
    if attempts >= policy.max_attempts:
        detail = f"gave up after {attempts} attempts; last error: {error.detail}"
        return DeadLetter(RETRIES_EXHAUSTED, detail, error.http_status)
    if now + delay - first_attempt_at > policy.max_age:
        detail = (
            f"gave up after {attempts} attempts: the next one would fall past "
            f"{policy.max_age:g} s from the first (CASESYNC_MAX_EVENT_AGE); "
            f"last error: {error.detail}"
        )
        return DeadLetter(RETRIES_EXHAUSTED, detail, error.http_status)
    return Retry(delay)


def backoff(
    attempts: int,
    policy: RetryPolicy,
    jitter: Callable[[], float] = random.random,
    retry_after: float | None = None,
) -> float:
    """Exponential back-off with full jitter, never shorter than ``Retry-After``, capped."""
    ceiling = min(policy.max_delay, policy.base_delay * 2.0 ** max(0, attempts - 1))
    delay = ceiling * jitter()
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, policy.max_delay)


def busy_delay(
    waits: int, policy: RetryPolicy, jitter: Callable[[], float] = random.random
) -> float:
    """The wait after ``waits`` earlier waits for the same busy case: doubling, jittered."""
    ceiling = min(policy.busy_max, policy.busy_base * 2.0**waits)
    return ceiling * (0.5 + jitter() / 2)
