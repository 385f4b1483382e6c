"""The Celery task that applies one batch of events: a thin wrapper over :mod:`core.apply`.

Flower sees each task's event ids, sources and case ids (its ``argsrepr``), never comments or
caseData. A task any of whose events was dead-lettered ends as FAILURE naming each of them; its
message is acknowledged all the same (acknowledged when it started), never redelivered or
retried: the dead letters are written. One whose events were all applied, superseded,
duplicates or put back on the schedule succeeds, its result counting each.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from celery import Celery, Task

from core.events import identity
from core.schedule import Job
from tasks.runtime import current_runtime

TASK_NAME = "casesync.apply_batch"
#: The task of the one-event-per-task design: its messages may still be queued at an upgrade.
LEGACY_TASK_NAME = "casesync.update_case"


class EventsDeadLettered(Exception):
    """Some events of the batch ended in the dead-letter stream (the rest were written)."""


def apply_batch(task: Task, jobs: list[dict[str, Any]]) -> dict[str, int]:
    """Apply a batch; the count of each way its events ended."""
    report = current_runtime(task.app.settings).applier.apply([Job.from_wire(j) for j in jobs])
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
        # An expected end, logged without a traceback: the dead letters say the rest.
        throws=(EventsDeadLettered,),
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
