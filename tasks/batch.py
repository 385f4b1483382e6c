"""The Celery task that applies one batch of events: a thin wrapper over :mod:`core.apply`.

Flower sees each task's event ids, sources and case ids (its ``argsrepr``), never comments or
caseData. A task any of whose events was dead-lettered ends as FAILURE naming each of them; its
message is acknowledged all the same (acknowledged when it started), never redelivered or
retried: the dead letters are written. One whose events were all applied, superseded,
duplicates or put back on the schedule succeeds, its result counting each. One cut off by Redis
refusing writes (full, or read-only) ends as FAILURE too, :class:`WaitingForRedis`: its events
spent nothing and come back due once Redis takes writes again.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from typing import Any

import redis
from celery import Celery, Task

from core.events import identity
from core.redis_faults import refusal_of
from core.schedule import Job
from tasks.runtime import current_runtime, write_refusals

TASK_NAME = "casesync.apply_batch"
#: The task of the one-event-per-task design: its messages may still be queued at an upgrade.
LEGACY_TASK_NAME = "casesync.update_case"


class EventsDeadLettered(Exception):
    """Some events of the batch ended in the dead-letter stream (the rest were written)."""


class WaitingForRedis(Exception):
    """Redis refused the batch's writes: its events wait, their attempts unspent, and come
    back due as soon as Redis takes writes again (the lease keeper gives them back)."""


def apply_batch(task: Task, jobs: list[dict[str, Any]]) -> dict[str, int]:
    """Apply a batch; the count of each way its events ended."""
    runtime = current_runtime(task.app.settings)
    # While this process saw refusals, one probe tells whether they ended (and says so); a
    # Redis that does not answer at all is the applier's to meet.
    with contextlib.suppress(redis.RedisError):
        write_refusals().writable(runtime.redis, "a task")
    try:
        report = runtime.applier.apply([Job.from_wire(j) for j in jobs])
    except redis.RedisError as exc:
        refusal = refusal_of(exc)
        if refusal is None:
            raise
        write_refusals().refused(refusal, "a task")
        raise WaitingForRedis(
            f"{len(jobs)} events wait for Redis to take writes again: {refusal.reason}"
        ) from exc
    if report.dead_lettered:
        lines = "; ".join(report.dead_lettered)
        raise EventsDeadLettered(
            f"{len(report.dead_lettered)} of {len(jobs)} dead-lettered: {lines}"
        )
    return dict(report.counts)


def adopt_legacy(
    task: Task,
    event: str,
    entry_id: str,
    attempts: int = 0,
    first_attempt_at: float | None = None,
    **_: Any,
) -> str:
    """A task queued by a worker of the one-event-per-task design (before an upgrade): its event
    goes on the schedule, due at once, its attempts kept, and is applied like any other. Without
    this, Celery would refuse the unknown task name and its event would be lost."""
    job = Job(entry_id, event, attempts, first_attempt_at)
    adopted = current_runtime(task.app.settings).schedule.adopt(job, time.time())
    return "scheduled" if adopted else "already finished or scheduled"


def register(app: Celery) -> None:
    app.task(
        name=TASK_NAME,
        bind=True,
        ignore_result=True,
        # Expected ends, logged without a traceback: the dead letters, or the one warning that
        # Redis refuses writes, say the rest.
        throws=(EventsDeadLettered, WaitingForRedis),
    )(apply_batch)
    app.task(name=LEGACY_TASK_NAME, bind=True, ignore_result=True)(adopt_legacy)


def send_batch(app: Celery, queue: str, jobs: Sequence[Job]) -> None:
    """Send one task carrying ``jobs``; what Flower shows of it names them, nothing more."""
    app.send_task(
        TASK_NAME,
        args=[[job.wire() for job in jobs]],
        queue=queue,
        argsrepr=describe(jobs),
        kwargsrepr="{}",
    )


def describe(jobs: Sequence[Job]) -> str:
    """Each job's entry id, event source and id, and case id, as JSON text."""
    shown = []
    for job in jobs:
        known = identity(job.raw_event)
        shown.append(
            {
                "entry": job.entry_id,
                "source": known.get("source"),
                "id": known.get("id"),
                "case": known.get("caseInstanceId"),
            }
        )
    return json.dumps(shown, separators=(",", ":"))
