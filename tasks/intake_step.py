"""Runs the stream intake inside every Celery worker, so each worker is one complete node.

A worker bootstep: started with the worker (``casesync worker`` or ``celery -A tasks worker``),
in the worker's main process whatever the pool, and stopped before the pool, so no entry is read
that the worker cannot hand on.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import httpx
from celery import bootsteps

from core import metrics
from core.outcomes import Streams
from settings import Settings, load_settings
from thalamus.client import build_http_client

if TYPE_CHECKING:
    # Imported where used: consumers.intake imports tasks, whose app imports this module, so a
    # program that imports consumers.intake first would find it half-initialised.
    from consumers.intake import Accepted, Intake, IntakeConfig

log = logging.getLogger("casesync.intake")


def intake_config(settings: Settings, consumer: str) -> IntakeConfig:
    from consumers.intake import IntakeConfig
    from tasks.runtime import limits_of

    return IntakeConfig(
        stream=settings.events_stream,
        group=settings.consumer_group,
        consumer=consumer,
        queue=settings.task_queue,
        batch=settings.intake_batch,
        backlog=settings.effective_backlog,
        max_deliveries=settings.max_deliveries,
        claim_idle=settings.claim_idle,
        # Past the visibility time-out, a task that has not touched its entry is not merely
        # waiting to be given back by a dead worker: its message is gone.
        lost_after=settings.visibility_timeout,
        limits=limits_of(settings),
    )


def enqueue_tasks(accepted: Sequence[Accepted]) -> None:
    """Publish one update task per event, over one producer."""
    from tasks import app
    from tasks.batch import update_case

    with app.producer_or_acquire() as producer:
        for item in accepted:
            update_case.apply_async(
                kwargs={
                    "event": item.raw,
                    "entry_id": item.entry_id,
                    "case_id": item.event.case_id,
                    "event_id": item.event.id,
                },
                producer=producer,
            )


class IntakeStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Starts one intake thread per worker."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._intake: Intake | None = None
        self._http: httpx.Client | None = None

    def start(self, worker: Any) -> None:
        from consumers.intake import Intake
        from tasks.runtime import breaker_of, redis_client, thalamus_client

        settings = load_settings()
        consumer = f"{socket.gethostname()}:{os.getpid()}"
        client = redis_client(settings)
        breaker = breaker_of(settings, client)
        assert settings.thalamus_url is not None  # checked when the worker started
        self._http = build_http_client(
            str(settings.thalamus_url),
            connect=settings.connect_timeout,
            read=min(settings.read_timeout, settings.breaker_probe_interval * 2),
            max_connections=1,
        )
        prober = thalamus_client(settings, self._http)

        def paused() -> bool:
            # While the breaker is open, read nothing; probe (one worker at a time) instead.
            closed = breaker.probe(prober.is_alive)
            metrics.BREAKER_OPEN.set(0 if closed else 1)
            return not closed

        if settings.metrics_port:
            metrics.serve(settings.metrics_port)

        self._intake = Intake(
            client,
            intake_config(settings, consumer),
            Streams.from_settings(settings),
            enqueue_tasks,
            paused=paused,
            report_lag=metrics.STREAM_LAG.set,
        )
        self._thread = threading.Thread(
            target=self._intake.run, args=(self._stop,), name="casesync-intake", daemon=True
        )
        self._thread.start()
        log.info("intake started as consumer %s on %s", consumer, settings.events_stream)

    def stop(self, worker: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        if self._intake is not None:
            self._intake.leave()
        if self._http is not None:
            self._http.close()
