"""Where ``celery -A tasks worker`` and ``celery -A tasks flower`` find the app.

Celery looks for ``tasks.celery`` when the package ``tasks`` has no ``app``; this is the one
module whose import builds the app (from the ``CASESYNC_*`` settings), so nothing imports it
but Celery's command line.
"""

from __future__ import annotations

from celery import Celery

from settings import load_settings
from tasks.observability import prepare_metrics_dir


def _build() -> Celery:
    settings = load_settings()
    # Before prometheus-client is first imported (by the app's modules): it picks its
    # multiprocess mode then.
    prepare_metrics_dir(settings.metrics_port)
    from tasks.app import create_app

    return create_app(settings)


app = _build()
