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
from typing import Any

import httpx
from celery import bootsteps

from consumers.intake import Intake, IntakeConfig
from core import metrics
from core.outcomes import Streams
from core.schedule import Schedule
from settings import Settings
from tasks.batch import send_batch
from tasks.runtime import (
    breaker_of,
    limits_of,
    redis_client,
    thalamus_client,
    trace_bounds_of,
    write_refusals,
)
from thalamus.client import build_http_client

log = logging.getLogger("casesync.intake")


def intake_config(settings: Settings, consumer: str) -> IntakeConfig:
    return IntakeConfig(
        stream=settings.events_stream,
        group=settings.consumer_group,
        consumer=consumer,
        queue=settings.task_queue,
        batch=settings.intake_batch,
        backlog=settings.effective_backlog,
        max_deliveries=settings.max_deliveries,
        claim_idle=settings.claim_idle,
        limits=limits_of(settings),
        trace=trace_bounds_of(settings),
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
        settings: Settings = worker.app.settings
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
            # While the breaker is open, take nothing; probe (one worker at a time) instead.
            closed = breaker.probe(prober.is_alive)
            metrics.BREAKER_OPEN.set(0 if closed else 1)
            return not closed

        if settings.metrics_port:
            metrics.serve(settings.metrics_port)

        self._intake = Intake(
            client,
            intake_config(settings, consumer),
            Streams.from_settings(settings),
            Schedule(client, lease=settings.visibility_timeout),
            lambda jobs: send_batch(worker.app, settings.task_queue, jobs),
            paused=paused,
            report_lag=metrics.STREAM_LAG.set,
            refusals=write_refusals(),
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
