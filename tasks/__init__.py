"""Celery side of casesync. ``celery -A tasks worker`` finds :data:`app` here."""

from __future__ import annotations

from settings import load_settings
from tasks.app import create_app

app = create_app(load_settings())

__all__ = ["app"]
