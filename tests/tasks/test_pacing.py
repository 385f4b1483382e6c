"""The shared rate cap, Retry-After pause, circuit breaker and session, over fakeredis.

The waits come from the server's clock, so each is checked against the time the test's own calls
took: a slow machine makes them shorter, never wrong."""

from __future__ import annotations

import threading
import time

import fakeredis
import pytest

from settings import keys
from thalamus.breaker import Breaker
from thalamus.session import RedisSessionCache
from thalamus.throttle import Throttle, Throttled

#: Waits are reckoned on the server's clock and the calls on this one: rounding, no more.
SLACK = 0.005


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
    # Ten calls at 10 per second: the n-th gets the slot n/10 s after the first call's, whichever
    # worker makes it, and waits for it less the time the calls took (nobody sleeps here).
    first_before = time.monotonic()
    workers[0].before_call()
    first_after = time.monotonic()
    assert waits == []
    for n in range(1, 10):
        before = time.monotonic()
        workers[n % 2].before_call()
        since_first = (before - first_after, time.monotonic() - first_before)
        if waits:
            wait = waits.pop()
            assert since_first[0] - SLACK <= n / 10 - wait <= since_first[1] + SLACK
        else:  # a machine so slow its calls fell behind the slots
            assert n / 10 <= since_first[1] + SLACK


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
    started = time.monotonic()
    got_429.after_call(429, 1.5)
    other.before_call()
    [wait] = waits
    assert 1.5 - (time.monotonic() - started) - SLACK <= wait <= 1.5 + SLACK


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
    started = time.monotonic()
    throttle.after_call(429, 10)
    throttle.after_call(429, 1)
    throttle.before_call()
    assert 10 - (time.monotonic() - started) - SLACK <= waits[0] <= 10 + SLACK


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
    started = time.monotonic()
    Throttle(client(server), max_rps=0).after_call(429, 2)
    other.before_call()
    assert waits == [], "within the interval the answer is reused, not asked again"
    now[0] += 0.1
    other.before_call()
    [wait] = waits
    assert 2 - (time.monotonic() - started) - SLACK <= wait <= 2 + SLACK
