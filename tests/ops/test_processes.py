"""The Redis-compatible processes tests and benchmarks start: a replica follows its primary."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from ops import processes


@pytest.mark.slow
def test_an_embedded_replica_has_what_its_primary_confirmed(tmp_path: Path) -> None:
    with (
        processes.embedded_redis() as primary_url,
        processes.embedded_replica(primary_url, tmp_path / "replica") as replica_url,
    ):
        primary = redis.Redis.from_url(primary_url, socket_timeout=5)
        replica = redis.Redis.from_url(replica_url, socket_timeout=5, decode_responses=True)
        try:
            primary.set("written", "on the primary")
            assert primary.wait(1, 5000) == 1
            assert replica.get("written") == "on the primary"
        finally:
            primary.close()
            replica.close()
