"""The Celery application: configured for reliability, JSON only, no result backend."""

from __future__ import annotations

from celery import Celery

from settings import Settings
from tasks.broker import use_fixed_transport
from tasks.observability import prepare_metrics_dir

TASK_NAME = "casesync.update_case"


def create_app(settings: Settings) -> Celery:
    """A Celery app whose broker is casesync's Redis; its worker also runs the stream intake."""
    prepare_metrics_dir(settings.metrics_port)
    use_fixed_transport()
    app = Celery("casesync", broker=settings.redis_url, include=["tasks.batch"])
    app.conf.update(
        # Only JSON crosses Redis: a pickled message is refused, never loaded.
        task_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        # Outcomes go to the results stream; nothing is stored per task.
        task_ignore_result=True,
        result_backend=None,
        # A task is acknowledged after it ran, and given back when its worker process dies.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_default_queue=settings.task_queue,
        # Each slot takes one message at a time: the work is I/O-bound and evenly spread.
        worker_prefetch_multiplier=1,
        broker_transport_options={
            # Longer than any retry delay, so a waiting retry is not delivered twice (a task
            # waiting for its countdown stays unacknowledged, and Redis redelivers it after
            # this time-out).
            "visibility_timeout": settings.visibility_timeout,
            # Give back the tasks of a dead worker promptly and all at once, not ten per sweep.
            "unacked_restore_interval": 5,
            "unacked_restore_throttle": 1,
            "unacked_restore_limit": 10_000,
            "socket_timeout": settings.redis_timeout,
            # Used by kombu only for sentinel:// broker URLs.
            "master_name": settings.redis_sentinel_master,
            "socket_connect_timeout": settings.redis_timeout,
        },
        broker_connection_retry_on_startup=True,
        # Flower sees the tasks, from the moment a worker receives them: a "sent" event per task
        # would cost the intake thread about 5% of its time (bench/README.md).
        worker_send_task_events=True,
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
    )
    from tasks.intake_step import IntakeStep

    app.steps["worker"].add(IntakeStep)
    return app
