"""How the worker is put together from the settings: Redis (single servers, TLS, sentinels) and
the limits its events are checked against."""

from __future__ import annotations

from typing import Any

import redis

from consumers.events import replyto_problem
from settings import Settings
from tasks.runtime import limits_of, redis_client, sentinel_parts


def test_a_sentinel_url_lists_every_sentinel_with_its_password_and_database() -> None:
    hosts, password, db = sentinel_parts(
        "sentinel://:s3cret@10.0.0.1:26379;sentinel://:s3cret@10.0.0.2:26380/2"
    )
    assert hosts == [("10.0.0.1", 26379), ("10.0.0.2", 26380)]
    assert password == "s3cret"
    assert db == 2


def test_a_tls_url_gives_a_tls_connection() -> None:
    client = redis_client(Settings(redis_url="rediss://:pw@cache.example:6380/1"))
    kwargs = client.connection_pool.connection_kwargs
    assert client.connection_pool.connection_class is redis.SSLConnection
    assert kwargs["password"] == "pw"
    assert kwargs["db"] == 1
    assert kwargs["socket_timeout"] == 10.0


def test_a_sentinel_url_follows_the_named_master() -> None:
    settings = Settings(
        redis_url="sentinel://127.0.0.1:26379;sentinel://127.0.0.1:26380",
        redis_sentinel_master="casesync-master",
    )
    pool: Any = redis_client(settings).connection_pool
    assert pool.service_name == "casesync-master"
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26380]


def test_the_workers_check_replyto_and_time_against_the_configured_names_and_settings() -> None:
    settings = Settings(
        events_stream="ops:events",
        results_stream="ops:results",
        dead_letter_stream="ops:dead",
        task_queue="ops-tasks",
        replyto_pattern=r"team:[a-z]+",
        max_clock_skew=60,
    )
    limits = limits_of(settings)

    for stream in ("ops:events", "ops:results", "ops:dead", "ops-tasks", "ops-tasks\x06\x163"):
        assert replyto_problem(stream, limits) is not None, stream
    assert replyto_problem("team:results", limits) is None
    assert "CASESYNC_REPLYTO_PATTERN" in (replyto_problem("billing:results", limits) or "")
    assert limits.max_clock_skew == 60
