"""How the worker connects to Redis: single servers, TLS and sentinels."""

from __future__ import annotations

from typing import Any

import redis

from settings import Settings
from tasks.runtime import redis_client, sentinel_parts


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
