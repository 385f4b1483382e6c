"""Logs and Prometheus metrics of a worker.

Metrics work with every pool: when a worker serves them, prometheus-client runs in multiprocess
mode (``PROMETHEUS_MULTIPROC_DIR``), so prefork children and the main process add up to one view.
That directory must be set before prometheus-client is first imported, which is why
:func:`prepare_metrics_dir` runs in the entry points (``casesync worker``, :mod:`tasks.celery`)
before the app is built.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any

_STANDARD_RECORD_KEYS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD_RECORD_KEYS})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def use_json_logs(logger: logging.Logger) -> None:
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())


def prepare_metrics_dir(metrics_port: int) -> None:
    """Choose the shared metrics folder of this worker's processes, if metrics are on."""
    if metrics_port and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="casesync-metrics-")
