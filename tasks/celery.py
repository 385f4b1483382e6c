"""Where ``celery -A tasks worker`` and ``celery -A tasks flower`` find the app.

Celery looks for ``tasks.celery`` when the package ``tasks`` has no ``app``; this is the one
module whose import builds the app (from the ``CASESYNC_*`` settings), so nothing imports it
but Celery's command line.
"""

from __future__ import annotations

from settings import load_settings
from tasks.app import create_app

app = create_app(load_settings())
