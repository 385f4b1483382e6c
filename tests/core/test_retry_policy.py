"""The retry decision as a table: error, attempts, age -> retry in N seconds or dead-letter."""

from __future__ import annotations

import pytest

from core.retry_policy import (
    RETRIES_EXHAUSTED,
    DeadLetter,
    Retry,
    RetryPolicy,
    backoff,
    busy_delay,
    decide,
)
from thalamus.errors import (
    DOCUMENTED_CODES,
    NotSent,
    OutcomeUnknown,
    PermanentError,
    SessionExpired,
    ThalamusError,
    TransientError,
)

POLICY = RetryPolicy(max_attempts=5, max_age=3600.0, base_delay=2.0, max_delay=60.0)
START = 1_800_000_000.0


def decision(
    error: ThalamusError,
    *,
    attempts: int = 1,
    age: float = 0.0,
    jitter: float = 1.0,
    policy: RetryPolicy = POLICY,
) -> Retry | DeadLetter:
    return decide(
        error,
        attempts=attempts,
        first_attempt_at=START,
        now=START + age,
        policy=policy,
        jitter=lambda: jitter,
    )


@pytest.mark.parametrize("code", [*DOCUMENTED_CODES, "somethingNew"])
@pytest.mark.parametrize("attempts", [1, 4])
def test_a_permanent_error_is_dead_lettered_at_once_under_its_code(
    code: str, attempts: int
) -> None:
    errors = {"caseData": code}
    error = PermanentError(f"HTTP 400 {code}", code=code, errors=errors, http_status=400)

    assert decision(error, attempts=attempts) == DeadLetter(code, f"HTTP 400 {code}", 400, errors)


@pytest.mark.parametrize(
    "error",
    [
        TransientError("connect refused"),
        TransientError("HTTP 503", http_status=503),
        OutcomeUnknown("PUT: no answer (ReadTimeout)"),
    ],
    ids=["connection", "503", "outcome-unknown"],
)
@pytest.mark.parametrize(("attempts", "ceiling"), [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0)])
def test_a_transient_error_is_retried_with_full_jitter_exponential_backoff(
    error: ThalamusError, attempts: int, ceiling: float
) -> None:
    assert decision(error, attempts=attempts, jitter=1.0) == Retry(ceiling)
    assert decision(error, attempts=attempts, jitter=0.25) == Retry(ceiling / 4)
    assert decision(error, attempts=attempts, jitter=0.0) == Retry(0.0)


def test_backoff_never_exceeds_the_max_delay() -> None:
    assert backoff(30, POLICY, lambda: 1.0) == POLICY.max_delay
    assert backoff(30, POLICY, lambda: 0.5) == POLICY.max_delay / 2


@pytest.mark.parametrize(
    ("retry_after", "jitter", "delay"),
    [
        (10.0, 0.0, 10.0),  # a floor under a short jittered delay
        (1.0, 1.0, 4.0),  # the back-off wins when it is longer
        (500.0, 0.0, 60.0),  # capped at max_delay
        (0.0, 0.5, 2.0),
    ],
)
def test_retry_after_is_a_floor_capped_at_the_max_delay(
    retry_after: float, jitter: float, delay: float
) -> None:
    error = TransientError("HTTP 429", http_status=429, retry_after=retry_after)

    assert decision(error, attempts=2, jitter=jitter) == Retry(delay)


@pytest.mark.parametrize(
    "error", [TransientError("HTTP 502", http_status=502), OutcomeUnknown("x")]
)
def test_the_last_attempt_of_the_budget_is_dead_lettered_as_retries_exhausted(
    error: ThalamusError,
) -> None:
    assert isinstance(decision(error, attempts=POLICY.max_attempts - 1), Retry)

    final = decision(error, attempts=POLICY.max_attempts)

    assert isinstance(final, DeadLetter)
    assert final.reason == RETRIES_EXHAUSTED
    assert f"after {POLICY.max_attempts} attempts" in final.detail
    assert error.detail in final.detail
    assert final.http_status == error.http_status


def test_a_retry_that_would_fall_past_the_max_age_is_retries_exhausted() -> None:
    error = TransientError("HTTP 504", http_status=504)

    within = decision(error, attempts=2, age=POLICY.max_age - 4.0, jitter=1.0)
    past = decision(error, attempts=2, age=POLICY.max_age - 3.9, jitter=1.0)

    assert within == Retry(4.0)
    assert isinstance(past, DeadLetter)
    assert past.reason == RETRIES_EXHAUSTED
    assert "CASESYNC_MAX_EVENT_AGE" in past.detail
    assert past.http_status == 504


def test_an_expired_session_is_retried_without_spending_the_budget() -> None:
    error = SessionExpired("401 after a fresh login", http_status=401)

    for attempts in (1, POLICY.max_attempts, POLICY.max_attempts + 3):
        result = decision(error, attempts=attempts)
        assert isinstance(result, Retry)
        assert result.spends_budget is False
        assert 0 < result.delay <= POLICY.max_delay


def test_transient_retries_spend_the_budget() -> None:
    result = decision(TransientError("x"), attempts=1)

    assert isinstance(result, Retry)
    assert result.spends_budget is True


@pytest.mark.parametrize(
    ("waits", "ceiling"), [(0, 0.05), (1, 0.1), (2, 0.2), (5, 1.6), (6, 2.0), (40, 2.0)]
)
def test_waiting_for_a_busy_case_doubles_from_busy_base_up_to_busy_max_jittered(
    waits: int, ceiling: float
) -> None:
    policy = RetryPolicy(busy_base=0.05, busy_max=2.0)

    # Never less than half the ceiling, so waiting tasks spread out but do not spin.
    assert busy_delay(waits, policy, lambda: 1.0) == pytest.approx(ceiling)
    assert busy_delay(waits, policy, lambda: 0.0) == pytest.approx(ceiling / 2)
    assert busy_delay(waits, policy, lambda: 0.5) == pytest.approx(ceiling * 0.75)


@pytest.mark.parametrize(("retry_after", "delay"), [(None, 2.0), (7.0, 7.0), (500.0, 60.0)])
def test_a_call_held_back_before_sending_waits_without_spending_the_budget(
    retry_after: float | None, delay: float
) -> None:
    error = NotSent("held by the shared pause", retry_after=retry_after)

    for attempts in (1, POLICY.max_attempts, POLICY.max_attempts + 3):
        assert decision(error, attempts=attempts) == Retry(delay, spends_budget=False)
