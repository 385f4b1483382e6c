"""One whole benchmark run: which scenarios, in which order, on which test bed."""

from __future__ import annotations

import contextlib
import importlib.util
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import redis

from bench.measure import Measurement
from bench.recovery import RecoveryRun, recovery
from bench.report import find
from bench.scenarios import Bed, PipelineRun, bare_http, pipeline, plain_consumer
from bench.workload import Harness
from ops import processes
from thalamus.simulator.process import running_simulator


@dataclass(frozen=True)
class Options:
    events: int = 2000
    latencies: tuple[float, ...] = (0.0, 100.0)
    concurrency: int = 64
    #: Pools measured besides threads (the default); gevent only where it is installed.
    pools: tuple[str, ...] = ()
    prefork_processes: int = 2
    paced_seconds: float = 3.0
    #: Scenarios needing more than one side: the paced run and two workers.
    derived: bool = True
    logs: Path | None = None
    #: The crash-recovery scenario, run after the latencies' scenarios; None: not run.
    recovery: RecoveryRun | None = field(default_factory=RecoveryRun)
    #: A replica attached to the embedded Redis, so the workers' WAIT for it is measured.
    replica: bool = False


def available_pools(wanted: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(pool for pool in wanted if pool != "gevent" or importlib.util.find_spec("gevent"))


@contextlib.contextmanager
def test_bed(redis_url: str, latency_ms: float, options: Options, logs: Path) -> Iterator[Bed]:
    client = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=30)
    try:
        with running_simulator("--latency-ms", f"{latency_ms:g}") as simulator:
            harness = Harness(client)
            yield Bed(
                redis_url,
                harness,
                simulator,
                latency_ms,
                options.concurrency,
                options.events,
                logs,
            )
    finally:
        client.close()


def scenarios(options: Options, latency_ms: float) -> Iterator[Callable[[Bed], Measurement]]:
    """The scenarios of one latency, in order; a paced run needs the pipeline's figure first."""
    yield bare_http
    yield plain_consumer
    yield partial(pipeline, run=PipelineRun("pipeline threads", concurrency=options.concurrency))
    for pool in available_pools(options.pools):
        yield partial(pipeline, run=_pool_run(options, pool))
    if options.derived and latency_ms > 0:
        two = PipelineRun("pipeline threads x2", workers=2, concurrency=options.concurrency)
        yield partial(pipeline, run=two)


def _pool_run(options: Options, pool: str) -> PipelineRun:
    """A pool at the same concurrency: prefork's processes share it out as threads each."""
    if pool != "prefork":
        return PipelineRun(f"pipeline {pool}", pool=pool, concurrency=options.concurrency)
    processes = options.prefork_processes
    threads = max(1, options.concurrency // processes)
    return PipelineRun("pipeline prefork", pool=pool, concurrency=threads, batches=processes)


def paced_run(options: Options, fastest: Measurement) -> PipelineRun:
    """Half the pipeline's measured maximum rate, for ``paced_seconds``."""
    rate = 0.5 * fastest.events_per_second
    return PipelineRun(
        "pipeline threads paced",
        concurrency=options.concurrency,
        rate=rate,
        count=max(10, int(rate * options.paced_seconds)),
    )


def run_suite(options: Options, say: Callable[[str], None]) -> list[Measurement]:
    """Every scenario of ``options``, in one embedded Redis, one simulator per latency."""
    measurements: list[Measurement] = []
    with contextlib.ExitStack() as stack:
        logs = options.logs or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        redis_url = stack.enter_context(processes.embedded_redis())
        if options.replica:
            stack.enter_context(processes.embedded_replica(redis_url, logs / "replica"))
        for latency in options.latencies:
            with test_bed(redis_url, latency, options, logs) as bed:
                for scenario in scenarios(options, latency):
                    measurements.append(scenario(bed))
                    say(_line(measurements[-1]))
                fastest = find(measurements, "pipeline threads", latency)
                if options.derived and latency == 0 and fastest is not None:
                    measurements.append(pipeline(bed, paced_run(options, fastest)))
                    say(_line(measurements[-1]))
        if options.recovery is not None:
            with test_bed(redis_url, options.recovery.latency_ms, options, logs) as bed:
                measurements.append(recovery(bed, options.recovery))
                say(_line(measurements[-1]))
    return measurements


def _line(item: Measurement) -> str:
    if item.recovery is not None:
        return f"{item.name} at {item.latency_ms:g} ms: {item.recovery.describe()}"
    return (
        f"{item.name} at {item.latency_ms:g} ms: {item.events_per_second:.0f} events/s, "
        f"{item.cpu_ms_per_event:.2f} CPU ms/event, p99 {item.latency(0.99):.0f} ms"
    )
