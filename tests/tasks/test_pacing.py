"""The shared rate cap, Retry-After pause, circuit breaker and session, over fakeredis."""

from __future__ import annotations

import threading

import fakeredis
import pytest

from settings import keys
from thalamus.breaker import Breaker
from thalamus.session import RedisSessionCache
from thalamus.throttle import Throttle, Throttled


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


def client(server: fakeredis.FakeServer) -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=server, decode_responses=True)


def test_the_rate_cap_spaces_calls_of_all_workers_together(server: fakeredis.FakeServer) -> None:
    waits: list[float] = []
    workers = [
        Throttle(client(server), max_rps=10, longest_wait=5, sleep=waits.append) for _ in range(2)
    ]
    for _ in range(5):
        for worker in workers:
            worker.before_call()
    # Ten calls at 10 per second: the n-th waits about n/10 s, whichever worker makes it.
    assert len(waits) >= 9
    assert max(waits) == pytest.approx(0.9, abs=0.05)
    assert sorted(waits) == pytest.approx([n / 10 for n in range(10 - len(waits), 10)], abs=0.05)


def test_without_a_cap_calls_do_not_wait(server: fakeredis.FakeServer) -> None:
    waits: list[float] = []
    throttle = Throttle(client(server), max_rps=0, sleep=waits.append)
    for _ in range(100):
        throttle.before_call()
    assert waits == []


def test_a_retry_after_pauses_every_worker(server: fakeredis.FakeServer) -> None:
    waits: list[float] = []
    got_429 = Throttle(client(server), max_rps=0, longest_wait=5, sleep=waits.append)
    other = Throttle(client(server), max_rps=0, longest_wait=5, sleep=waits.append)
    got_429.after_call(429, 1.5)
    other.before_call()
    assert waits == [pytest.approx(1.5, abs=0.05)]


def test_a_long_pause_hands_the_call_back_instead_of_blocking(
    server: fakeredis.FakeServer,
) -> None:
    throttle = Throttle(client(server), max_rps=0, longest_wait=2, sleep=lambda _: None)
    throttle.after_call(503, 30)
    with pytest.raises(Throttled) as raised:
        throttle.before_call()
    assert raised.value.retry_after == pytest.approx(30, abs=0.1)


def test_a_pause_never_moves_back(server: fakeredis.FakeServer) -> None:
    waits: list[float] = []
    throttle = Throttle(client(server), max_rps=0, longest_wait=60, sleep=waits.append)
    throttle.after_call(429, 10)
    throttle.after_call(429, 1)
    throttle.before_call()
    assert waits[0] == pytest.approx(10, abs=0.1)


def test_a_run_of_failures_opens_the_breaker_for_everyone(server: fakeredis.FakeServer) -> None:
    one = Breaker(client(server), threshold=3, probe_interval=0.01)
    other = Breaker(client(server), threshold=3, probe_interval=0.01)
    one.after_call(503, None)
    one.after_call(None, None)
    assert other.open_reason() is None
    one.after_call(502, None)
    reason = other.open_reason()
    assert reason is not None
    assert "3 calls in a row failed" in reason


def test_an_answer_breaks_the_run_of_failures(server: fakeredis.FakeServer) -> None:
    breaker = Breaker(client(server), threshold=2, probe_interval=0.01)
    breaker.after_call(503, None)
    breaker.after_call(400, None)
    breaker.after_call(503, None)
    assert breaker.open_reason() is None


def test_the_breaker_closes_when_a_probe_answers(server: fakeredis.FakeServer) -> None:
    breaker = Breaker(client(server), threshold=1, probe_interval=0.01)
    breaker.after_call(None, None)
    assert breaker.probe(lambda: False) is False
    assert breaker.open_reason() is not None
    client(server).delete(keys.BREAKER_PROBE)
    assert breaker.probe(lambda: True) is True
    assert breaker.open_reason() is None


def test_only_one_worker_probes_at_a_time(server: fakeredis.FakeServer) -> None:
    probes: list[str] = []
    first = Breaker(client(server), threshold=1, probe_interval=60)
    second = Breaker(client(server), threshold=1, probe_interval=60)
    first.open("test")

    def probe(name: str) -> bool:
        probes.append(name)
        return False

    first.probe(lambda: probe("first"))
    second.probe(lambda: probe("second"))
    assert probes == ["first"]


def test_one_login_renews_the_session_for_all_workers(server: fakeredis.FakeServer) -> None:
    logins: list[int] = []
    start = threading.Barrier(4)

    def login() -> str:
        logins.append(1)
        return "JSESSIONID=fresh"

    caches = [RedisSessionCache(client(server), poll=0.01) for _ in range(4)]
    results: list[str] = []

    def renew(cache: RedisSessionCache) -> None:
        start.wait(timeout=5)
        results.append(cache.renew(None, login))

    threads = [threading.Thread(target=renew, args=(cache,)) for cache in caches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert results == ["JSESSIONID=fresh"] * 4
    assert len(logins) == 1


def test_a_refused_session_is_replaced_not_reused(server: fakeredis.FakeServer) -> None:
    cache = RedisSessionCache(client(server))
    cache.renew(None, lambda: "JSESSIONID=old")
    assert cache.renew("JSESSIONID=old", lambda: "JSESSIONID=new") == "JSESSIONID=new"
    assert RedisSessionCache(client(server)).current() == "JSESSIONID=new"


def test_without_a_cap_a_pause_reaches_other_workers_within_the_check_interval(
    server: fakeredis.FakeServer,
) -> None:
    now = [100.0]
    waits: list[float] = []
    other = Throttle(
        client(server),
        max_rps=0,
        longest_wait=5,
        sleep=waits.append,
        monotonic=lambda: now[0],
        pause_check_interval=0.1,
    )
    other.before_call()  # nothing paused: asks Redis, then trusts that for 0.1 s
    Throttle(client(server), max_rps=0).after_call(429, 2)
    other.before_call()
    assert waits == [], "within the interval the answer is reused, not asked again"
    now[0] += 0.1
    other.before_call()
    assert waits == [pytest.approx(2, abs=0.1)]
