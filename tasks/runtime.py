"""The composition root of a worker process: settings, Redis and HTTP clients, the applier.

Built on first use in each process (a prefork child builds its own after the fork), reused by
every task of the process, closed at shut-down. Nothing is built at import time.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import redis
from redis.sentinel import Sentinel

from consumers.events import Limits
from settings import Settings, SettingsError, load_settings
from tasks.apply import EventApplier
from tasks.breaker import Breaker
from tasks.guards import Guards
from tasks.metrics import ApiCallMetrics
from tasks.outcomes import Streams
from tasks.retry_policy import RetryPolicy
from tasks.session import RedisSessionCache
from tasks.throttle import Throttle
from thalamus.client import CallHooks, SessionCache, ThalamusClient, build_http_client


@dataclass
class Runtime:
    settings: Settings
    redis: redis.Redis
    http: httpx.Client
    thalamus: ThalamusClient
    applier: EventApplier

    def close(self) -> None:
        self.http.close()
        self.redis.close()


def redis_client(settings: Settings, *, max_connections: int | None = None) -> redis.Redis:
    """A Redis client for casesync's own commands, with every call bounded by a time-out.

    ``redis://`` and ``rediss://`` (TLS) URLs go to one server; ``sentinel://`` URLs, as kombu
    takes them (``sentinel://:pw@h1:26379;sentinel://:pw@h2:26379/0``), to the master that the
    sentinels name ``CASESYNC_REDIS_SENTINEL_MASTER``, followed through a fail-over.
    """
    options: dict[str, Any] = {
        "decode_responses": True,
        # Bytes that are not UTF-8 survive the round trip, so a dead letter keeps them unchanged.
        "encoding_errors": "surrogateescape",
        "socket_timeout": settings.redis_timeout,
        "socket_connect_timeout": settings.redis_timeout,
        "health_check_interval": 30,
        "max_connections": max_connections,
    }
    if not settings.redis_url.startswith("sentinel://"):
        return redis.Redis.from_url(settings.redis_url, **options)
    hosts, password, db = sentinel_parts(settings.redis_url)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        hosts,
        sentinel_kwargs={"password": password, "socket_timeout": settings.redis_timeout},
        password=password,
    )
    master: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        settings.redis_sentinel_master, db=db, **options
    )
    return master


def sentinel_parts(url: str) -> tuple[list[tuple[str, int]], str | None, int]:
    """The sentinels, the password and the database of a kombu-style ``sentinel://`` URL."""
    hosts: list[tuple[str, int]] = []
    password: str | None = None
    db = 0
    for part in url.split(";"):
        parsed = urlsplit(part.strip())
        hosts.append((parsed.hostname or "localhost", parsed.port or 26379))
        password = parsed.password or password
        if parsed.path.strip("/").isdigit():
            db = int(parsed.path.strip("/"))
    return hosts, password, db


def thalamus_client(
    settings: Settings,
    http: httpx.Client,
    *,
    sessions: SessionCache | None = None,
    hooks: Sequence[CallHooks] = (),
) -> ThalamusClient:
    return ThalamusClient(
        http,
        touchpoint=settings.thalamus_touchpoint,
        token=settings.thalamus_token,
        principal=settings.thalamus_principal,
        password=settings.thalamus_password,
        sessions=sessions,
        hooks=hooks,
    )


def breaker_of(settings: Settings, client: redis.Redis) -> Breaker:
    return Breaker(
        client,
        threshold=settings.breaker_threshold,
        probe_interval=settings.breaker_probe_interval,
    )


def limits_of(settings: Settings) -> Limits:
    return Limits(
        max_event_bytes=settings.max_event_bytes,
        max_comments=settings.max_comments,
        max_case_data_fields=settings.max_case_data_fields,
        max_clock_skew=settings.max_clock_skew,
        replyto_pattern=re.compile(settings.replyto_pattern),
        own_streams=frozenset(
            {settings.events_stream, settings.results_stream, settings.dead_letter_stream}
        ),
        task_queue=settings.task_queue,
    )


def build_runtime(settings: Settings) -> Runtime:
    # One line per request at INFO would drown the outcome lines.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if settings.thalamus_url is None:
        raise SettingsError("invalid setting CASESYNC_THALAMUS_URL: required by the worker")
    connections = settings.concurrency + 8
    client = redis_client(settings, max_connections=connections)
    http = build_http_client(
        str(settings.thalamus_url),
        connect=settings.connect_timeout,
        read=settings.read_timeout,
        write=settings.write_timeout,
        pool=settings.pool_timeout,
        max_connections=connections,
    )
    breaker = breaker_of(settings, client)
    throttle = Throttle(client, max_rps=settings.thalamus_max_rps)
    thalamus = thalamus_client(
        settings,
        http,
        sessions=RedisSessionCache(client),
        hooks=(throttle, breaker, ApiCallMetrics()),
    )
    applier = EventApplier(
        redis_client=client,
        thalamus=thalamus,
        guards=Guards(
            client,
            lock_ttl=settings.case_lock_ttl,
            ledger_ttl=settings.ledger_ttl,
            # Long enough to outlast any redelivery of a task: restored after the visibility
            # time-out, or held by a worker that is down for a while.
            done_ttl=max(86400.0, 3 * settings.visibility_timeout),
        ),
        streams=Streams.from_settings(settings),
        policy=RetryPolicy(
            max_attempts=settings.max_attempts,
            max_age=settings.max_event_age,
            base_delay=settings.retry_base_delay,
            max_delay=settings.retry_max_delay,
        ),
        limits=limits_of(settings),
        max_deliveries=settings.max_deliveries,
        on_session_refused=breaker.open,
        breaker_wait=settings.breaker_probe_interval,
    )
    return Runtime(settings, client, http, thalamus, applier)


_lock = threading.Lock()
_current: tuple[int, Runtime] | None = None


def current_runtime() -> Runtime:
    """This process's runtime, built on first use."""
    global _current
    with _lock:
        if _current is None or _current[0] != os.getpid():
            _current = (os.getpid(), build_runtime(load_settings()))
        return _current[1]


def close_runtime() -> None:
    global _current
    with _lock:
        if _current is not None and _current[0] == os.getpid():
            _current[1].close()
        _current = None
