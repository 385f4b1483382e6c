"""The drain sample of ``casesync status``: what it counts, and when it cannot say."""

from __future__ import annotations

from collections.abc import Callable

import redis

from ops.health import Drain, Watched, sample_drain
from tests.conftest import DEAD_LETTER, EVENTS, RESULTS

WATCHED = Watched(
    events=EVENTS, group="casesync", queue="casesync", results=RESULTS, dead_letter=DEAD_LETTER
)


def _sample(client: redis.Redis, meanwhile: Callable[[], object]) -> Drain | None:
    ticks = iter([10.0, 12.0])

    def sleep(seconds: float) -> None:
        meanwhile()

    return sample_drain(client, WATCHED, 2.0, sleep=sleep, clock=lambda: next(ticks))


def test_outcomes_count_as_they_are_written_even_when_the_results_stream_is_trimmed(
    any_redis: redis.Redis,
) -> None:
    for _ in range(50):
        any_redis.xadd(RESULTS, {"event": "{}"})

    def meanwhile() -> None:
        for _ in range(8):
            any_redis.xadd(RESULTS, {"event": "{}"})
        any_redis.xadd(EVENTS, {"event": "{}"})
        any_redis.xtrim(RESULTS, maxlen=10)  # as CASESYNC_RESULTS_MAX_LENGTH does

    drain = _sample(any_redis, meanwhile)

    assert drain == Drain(seconds=2.0, arrived=1, ended=8)
    assert drain.draining_per_second == 3.5
    assert drain.empty_in(7) == 2.0


def test_a_backlog_that_does_not_shrink_has_no_time_to_empty(any_redis: redis.Redis) -> None:
    drain = _sample(any_redis, lambda: any_redis.xadd(EVENTS, {"event": "{}"}))

    assert drain == Drain(seconds=2.0, arrived=1, ended=0)
    assert drain.empty_in(100) is None
    assert Drain(seconds=1.0, arrived=0, ended=0).empty_in(100) is None


def test_a_stream_deleted_and_made_again_during_the_sample_gives_no_rate(
    any_redis: redis.Redis,
) -> None:
    for _ in range(5):
        any_redis.xadd(RESULTS, {"event": "{}"})

    def meanwhile() -> None:
        any_redis.delete(RESULTS)
        any_redis.xadd(RESULTS, {"event": "{}"})

    assert _sample(any_redis, meanwhile) is None
