"""The Celery application: configured for reliability, JSON only, no result backend."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import after_setup_logger, worker_process_shutdown, worker_shutdown

from settings import Settings
from tasks import batch
from tasks.broker import use_fixed_transport
from tasks.intake_step import IntakeStep
from tasks.observability import use_json_logs
from tasks.runtime import close_runtime, redis_connection_options, sentinel_parts

#: Celery's loggers of a line per task received and per task ended.
TASK_LINES = ("celery.worker.strategy", "celery.app.trace")


class CasesyncApp(Celery):  # type: ignore[misc]
    """A Celery app that carries casesync's settings, read once per process."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__("casesync", broker=settings.redis_url, **kwargs)
        self.settings = settings


def create_app(settings: Settings) -> CasesyncApp:
    """The app whose broker is casesync's Redis; its worker also runs the stream intake.

    The entry point calls :func:`tasks.observability.prepare_metrics_dir` first, when metrics
    are on, before anything imports prometheus-client.
    """
    use_fixed_transport()
    app = CasesyncApp(settings)
    app.conf.update(
        # Only JSON crosses Redis: a pickled message is refused, never loaded.
        task_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        # Outcomes go to the results stream; nothing is stored per task.
        task_ignore_result=True,
        result_backend=None,
        task_default_queue=settings.task_queue,
        # A task is acknowledged when it starts: from then on the schedule's leases answer for
        # its events (renewed while it runs, handed on again once they run out), so the broker
        # never has to redeliver a task that is merely slow.
        task_acks_late=False,
        worker_prefetch_multiplier=1,
        broker_transport_options={
            # Only a task taken but not started by a worker that died waits this long; its
            # events come back through the schedule at the same time anyway.
            "visibility_timeout": settings.visibility_timeout,
            # The consumer's BRPOP too: a half-open broker connection is dropped soon.
            **redis_connection_options(settings),
            # Used by kombu only for sentinel:// broker URLs.
            "master_name": settings.redis_sentinel_master,
            **_sentinel_options(settings),
        },
        broker_connection_retry_on_startup=True,
        # Cancels only running tasks acknowledged late, and casesync's are acknowledged when they
        # start; set, so that every lost broker connection no longer logs Celery's deprecation
        # warning about the default changing in Celery 6.
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_send_task_events=settings.task_events,
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
    )
    batch.register(app)
    app.steps["worker"].add(IntakeStep)
    _connect_signals(settings)
    return app


def _sentinel_options(settings: Settings) -> dict[str, Any]:
    """For ``sentinel://``: the URL's password for the Sentinels too, as the workers' own Redis
    client has it. kombu passes the password to the primary only, so password-protected
    Sentinels would refuse the broker."""
    if not settings.redis_url.startswith("sentinel://"):
        return {}
    _, password, _ = sentinel_parts(settings.redis_url)
    timeout = settings.redis_timeout
    sentinel_kwargs = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    return {"sentinel_kwargs": {**sentinel_kwargs, "password": password}}


def _connect_signals(settings: Settings) -> None:
    def close(**_: Any) -> None:
        close_runtime()

    def set_up_logs(logger: logging.Logger, **_: Any) -> None:
        if settings.log_json:
            use_json_logs(logger)
        # Celery's "received" and "succeeded" lines per task repeat what the outcome lines (one
        # per event) and Flower say; at a few events per task they cost more than the events.
        for name in TASK_LINES:
            logging.getLogger(name).setLevel(max(logging.WARNING, logger.level))

    # weak=False: the receivers are closures that nothing else keeps alive.
    worker_process_shutdown.connect(close, weak=False)
    worker_shutdown.connect(close, weak=False)
    after_setup_logger.connect(set_up_logs, weak=False)
