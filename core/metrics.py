"""The Prometheus metrics of casesync's workers (served on ``CASESYNC_METRICS_PORT``).

Import this module only after :func:`tasks.observability.prepare_metrics_dir` ran: the
multiprocess mode of prometheus-client is chosen when it is first imported.
"""

from __future__ import annotations

import os
import threading
import time

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
)

OUTCOMES = Counter(
    "casesync_outcomes_total", "Events ended, by outcome type and reason.", ["type", "reason"]
)
DEAD_LETTERS = Counter(
    "casesync_dead_letters_total", "Events dead-lettered, by reason.", ["reason"]
)
API_CALLS = Counter(
    "casesync_api_calls_total",
    "Calls to Thalamus, by status ('none' when no answer came).",
    ["status"],
)
API_LATENCY = Histogram(
    "casesync_api_latency_seconds",
    "Time from sending a request to Thalamus to its answer.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
REPLY_FAILURES = Counter(
    "casesync_reply_failures_total",
    "Outcome events that could not be added to the event's replyto stream (the results stream "
    "has them).",
)
RATE_LIMIT_WAIT = Counter(
    "casesync_rate_limit_wait_seconds_total",
    "Seconds spent waiting for the shared rate cap or a Retry-After pause.",
)
STREAM_LAG = Gauge(
    "casesync_stream_lag",
    "Entries of the events stream not yet read by the consumer group.",
    multiprocess_mode="mostrecent",
)
BREAKER_OPEN = Gauge(
    "casesync_breaker_open",
    "1 while the circuit breaker is open.",
    multiprocess_mode="mostrecent",
)


class ApiCallMetrics:
    """A :class:`thalamus.client.CallHooks` that times every call and counts its status."""

    def __init__(self) -> None:
        self._started = threading.local()

    def before_call(self) -> None:
        self._started.at = time.perf_counter()

    def after_call(self, status: int | None, retry_after: float | None) -> None:
        started = getattr(self._started, "at", None)
        if started is not None:
            API_LATENCY.observe(time.perf_counter() - started)
        API_CALLS.labels(status="none" if status is None else str(status)).inc()


def count_outcome(kind: str, reason: str | None) -> None:
    OUTCOMES.labels(type=kind.removeprefix("casesync.update."), reason=reason or "").inc()
    if reason:
        DEAD_LETTERS.labels(reason=reason).inc()


def serve(port: int) -> None:
    """Serve the metrics of every process of this worker on ``port``."""
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(port, registry=registry)
