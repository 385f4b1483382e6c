"""The composition root of a worker process: Redis and HTTP clients, threads, the applier.

Built from the app's settings on first use in each process (a prefork child builds its own after
the fork), reused by every task of the process, closed at shut-down. Nothing is built at import
time.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import redis
from redis.sentinel import Sentinel

from core import metrics, trace
from core.apply import BatchApplier
from core.events import Limits
from core.guards import Guards
from core.metrics import ApiCallMetrics
from core.outcomes import Streams
from core.redis_faults import WriteRefusals
from core.replicas import ReplicaWait
from core.retry_policy import RetryPolicy
from core.schedule import LeaseKeeper, Schedule
from settings import Settings, SettingsError
from thalamus.breaker import Breaker
from thalamus.client import CallHooks, SessionCache, ThalamusClient, build_http_client
from thalamus.session import RedisSessionCache
from thalamus.throttle import Throttle


@dataclass
class Runtime:
    settings: Settings
    redis: redis.Redis
    http: httpx.Client
    thalamus: ThalamusClient
    schedule: Schedule
    keeper: LeaseKeeper
    executor: ThreadPoolExecutor
    applier: BatchApplier

    def close(self) -> None:
        self.keeper.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.http.close()
        self.redis.close()


def redis_connection_options(settings: Settings) -> dict[str, Any]:
    """Time-outs, TCP keepalive and health checks for every Redis connection casesync makes.

    The broker's (kombu) and casesync's own clients take the same, so no connection, busy or
    idle in a pool, waits on a dead peer for longer than about twice ``CASESYNC_REDIS_TIMEOUT``:
    a command gives up after the time-out; a connection idle for that long is checked (a PING)
    before it is used again, and kombu drops a consumer's BRPOP that stays unanswered that long
    past its own time-out (at kombu's default, 25 s, a consumer waited 50 s on a half-open one);
    keepalive probes find a peer that vanished (a host gone, a NAT entry dropped) under an idle
    connection.
    """
    return {
        "socket_timeout": settings.redis_timeout,
        "socket_connect_timeout": settings.redis_timeout,
        "socket_keepalive": True,
        "socket_keepalive_options": keepalive_options(settings.redis_timeout),
        "health_check_interval": settings.redis_timeout,
    }


def keepalive_options(timeout: float) -> dict[int, int]:
    """TCP keepalive that gives up on a silent peer about twice ``timeout`` after its last word:
    the first probe after ``timeout``, then three a third of it apart (options this platform
    lacks are left at the system's values)."""
    idle = max(1, math.ceil(timeout))
    wanted = {"TCP_KEEPIDLE": idle, "TCP_KEEPINTVL": max(1, math.ceil(idle / 3)), "TCP_KEEPCNT": 3}
    return {getattr(socket, name): value for name, value in wanted.items() if hasattr(socket, name)}


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
        **redis_connection_options(settings),
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


def retry_policy_of(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=settings.max_attempts,
        max_age=settings.max_event_age,
        base_delay=settings.retry_base_delay,
        max_delay=settings.retry_max_delay,
        breaker_wait=settings.breaker_probe_interval,
    )


def trace_bounds_of(settings: Settings) -> trace.Bounds:
    return trace.Bounds(length=settings.trace_length, ttl=settings.trace_ttl)


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
        per_thread=True,
    )
    breaker = breaker_of(settings, client)
    throttle = Throttle(
        client, max_rps=settings.thalamus_max_rps, on_wait=metrics.RATE_LIMIT_WAIT.inc
    )
    thalamus = thalamus_client(
        settings,
        http,
        sessions=RedisSessionCache(client),
        hooks=(throttle, breaker, ApiCallMetrics()),
    )
    schedule = Schedule(client, lease=settings.visibility_timeout)
    keeper = LeaseKeeper(
        schedule,
        # A third of the shorter of the two, so two renewals may fail before either runs out.
        interval=min(settings.visibility_timeout, settings.case_lock_ttl) / 3,
        lock_ttl=settings.case_lock_ttl,
        clock=time.time,
        refusals=write_refusals(),
    )
    executor = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="casesync-update")
    applier = BatchApplier(
        redis_client=client,
        thalamus=thalamus,
        guards=Guards(
            client,
            lock_ttl=settings.case_lock_ttl,
            ledger_ttl=settings.ledger_ttl,
            replicas=ReplicaWait(settings.redis_wait_replicas, settings.redis_wait_timeout),
        ),
        schedule=schedule,
        keeper=keeper,
        executor=executor,
        streams=Streams.from_settings(settings),
        policy=retry_policy_of(settings),
        limits=limits_of(settings),
        max_deliveries=settings.max_deliveries,
        breaker_tripped=breaker.tripped,
        on_session_refused=breaker.open,
        trace_bounds=trace_bounds_of(settings),
        refusals=write_refusals(),
    )
    return Runtime(settings, client, http, thalamus, schedule, keeper, executor, applier)


_lock = threading.Lock()
_current: tuple[int, Runtime] | None = None


def current_runtime(settings: Settings) -> Runtime:
    """This process's runtime, built on first use from ``settings``."""
    global _current
    with _lock:
        if _current is None or _current[0] != os.getpid():
            _current = (os.getpid(), build_runtime(settings))
        return _current[1]


def close_runtime() -> None:
    global _current
    with _lock:
        if _current is not None and _current[0] == os.getpid():
            _current[1].close()
        _current = None


_refusals: tuple[int, WriteRefusals] | None = None
_refusals_lock = threading.Lock()


def write_refusals() -> WriteRefusals:
    """This process's record of Redis refusing writes, shared by intake, tasks and the broker
    (a prefork child starts its own: what it inherited describes its parent)."""
    global _refusals
    with _refusals_lock:
        if _refusals is None or _refusals[0] != os.getpid():
            _refusals = (os.getpid(), WriteRefusals(clock=time.monotonic))
        return _refusals[1]
