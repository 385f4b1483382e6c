"""The Celery task that applies one event; a thin wrapper over :mod:`core.apply`."""

from __future__ import annotations

import logging
from typing import Any, NoReturn

from celery import Task
from celery.exceptions import Reject, Retry
from celery.signals import after_setup_logger, worker_process_shutdown, worker_shutdown

from core.apply import Job, RetryLater
from core.retry_policy import RetryPolicy, backoff
from settings import load_settings
from tasks import app
from tasks.app import TASK_NAME
from tasks.observability import use_json_logs
from tasks.runtime import close_runtime, current_runtime

log = logging.getLogger("casesync.task")

#: Back-off for failures outside the event's control (Redis unreachable, a bug).
_INFRA_POLICY = RetryPolicy(base_delay=1.0, max_delay=30.0)


@app.task(name=TASK_NAME, bind=True, acks_late=True, max_retries=None, ignore_result=True)
def update_case(
    self: Task,
    event: str,
    entry_id: str,
    case_id: int | None = None,
    event_id: str | None = None,
    attempts: int = 0,
    first_attempt_at: float | None = None,
    infra_failures: int = 0,
) -> str:
    """Apply one event. ``case_id`` and ``event_id`` are there so Flower can find the task."""
    job = Job(event, entry_id, attempts, first_attempt_at)
    try:
        result = current_runtime().applier.apply(job)
    except Exception as exc:
        # Redis unreachable or a bug: the event is kept, never dropped. Retry with back-off;
        # if even that cannot be sent, give the message back to the queue.
        log.exception("event %s of case %s could not be handled; will retry", event_id, case_id)
        delay = backoff(infra_failures + 1, _INFRA_POLICY)
        kwargs = {**self.request.kwargs, "infra_failures": infra_failures + 1}
        _retry_or_give_back(self, delay, kwargs, exc)
    if isinstance(result, RetryLater):
        _retry_or_give_back(self, result.delay, _retry_kwargs(self.request.kwargs, result))
    return result.outcome.type if result.outcome else "already-done"


def _retry_or_give_back(
    task: Task, delay: float, kwargs: dict[str, Any], exc: Exception | None = None
) -> NoReturn:
    """Queue the retry; if the broker cannot take it, give the message back instead.

    A failed ``retry`` would otherwise fail the task, and a failed task is acknowledged: the
    event would be lost. Given back, it is delivered again (at once, or once Redis is reachable
    and the visibility time-out has passed).
    """
    try:
        raise task.retry(countdown=delay, kwargs=kwargs, exc=exc)
    except Retry:
        raise
    except Exception as error:
        log.warning("could not queue a retry (%s); giving the task back", error)
        raise Reject(error, requeue=True) from error


def _retry_kwargs(current: dict[str, Any], later: RetryLater) -> dict[str, Any]:
    return {
        **current,
        "attempts": later.job.attempts,
        "first_attempt_at": later.job.first_attempt_at,
        "infra_failures": 0,
    }


@worker_process_shutdown.connect
@worker_shutdown.connect
def _close_runtime(**_: Any) -> None:
    close_runtime()


@after_setup_logger.connect
def _json_logs(logger: logging.Logger, **_: Any) -> None:
    if load_settings().log_json:
        use_json_logs(logger)
