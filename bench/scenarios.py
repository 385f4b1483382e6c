"""The sides a run measures, each against the same Redis and simulator: the two baselines of
:mod:`bench.baselines` and the casesync pipeline (real worker processes).

Each scenario starts from an empty database and a reset simulator, warms its processes up,
samples /proc and Redis, does the measured work, samples again, and stops what it started.
"""

from __future__ import annotations

import contextlib
import json
import select
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.measure import (
    Measurement,
    RedisCounters,
    cpu_seconds,
    descendants,
    peak_memory_kb,
)
from bench.workload import Harness, make_events, match_outcomes
from ops import processes
from thalamus.simulator.config import DEFAULT_TOKEN, DEFAULT_TOUCHPOINT
from thalamus.simulator.process import RunningSimulator

EVENTS = "casesync:events"
RESULTS = "casesync:results"
QUEUE = "casesync"
#: Seconds a worker gets to start and finish its warm-up events.
START_TIMEOUT = 90.0


class BenchError(Exception):
    """A side did not finish its work; the message says which and why."""


@dataclass
class Bed:
    """What every scenario of one API latency shares."""

    redis_url: str
    harness: Harness
    simulator: RunningSimulator
    latency_ms: float
    concurrency: int
    events: int
    logs: Path

    def fresh(self) -> None:
        self.harness.client.flushdb()
        self.harness.published.clear()
        self.simulator.admin.reset()  # also clears the faults: set the latency again
        self.simulator.admin.set_faults(latency_ms=self.latency_ms)

    def work_timeout(self, count: int) -> float:
        return max(60.0, count / 20)


class Child:
    """A baseline process spoken to over its standard input and output."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
        )

    def send(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode())
        self.process.stdin.flush()

    def line(self, timeout: float) -> str:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        text = self.process.stdout.readline().decode().strip() if ready else ""
        if not text:
            raise BenchError(f"{self.process.args!r} said nothing within {timeout:.0f} s")
        return text

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            processes.kill_process(self.process)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()


@contextlib.contextmanager
def child(bed: Bed, name: str, *args: str) -> Iterator[Child]:
    argv = [sys.executable, "-m", "bench.baselines", *args, "--url", bed.simulator.url]
    argv += ["--concurrency", str(bed.concurrency), "--token", DEFAULT_TOKEN]
    running = Child(argv, bed.logs / f"{name}.log")
    try:
        yield running
    finally:
        running.close()


def bare_http(bed: Bed) -> Measurement:
    """(a) the same PUTs from a thread pool over one httpx client, no Redis."""
    bed.fresh()
    events = make_events(bed.concurrency + bed.events)
    with child(bed, f"bare-{bed.latency_ms:g}", "http") as running:
        running.send("\x1e".join(events) + "\n")
        running.line(START_TIMEOUT)  # ready
        pids = [running.process.pid]
        before = cpu_seconds(pids)
        running.send("go\n")
        result = json.loads(running.line(bed.work_timeout(bed.events)))
        cpu = cpu_seconds(pids) - before
        memory, count = peak_memory_kb(pids), len(descendants(pids[0]))
    return Measurement(
        name="bare httpx",
        side="bare httpx",
        latency_ms=bed.latency_ms,
        events=int(result["events"]),
        seconds=float(result["seconds"]),
        cpu_seconds=cpu,
        peak_memory_kb=memory,
        latencies_ms=[float(value) for value in result["latencies_ms"]],
        processes=count,
        notes="latency: per request",
    )


def plain_consumer(bed: Bed) -> Measurement:
    """(b) a consumer-group loop without Celery: XREADGROUP, PUT, XADD + XACK."""
    bed.fresh()
    harness = bed.harness
    warm = make_events(bed.concurrency, first_case=4001)
    args = ["stream", "--redis", bed.redis_url, "--stream", EVENTS, "--results", RESULTS]
    args += ["--events", str(bed.events), "--warmup", str(len(warm))]
    with child(bed, f"plain-{bed.latency_ms:g}", *args) as running:
        harness.publish(EVENTS, warm)
        running.line(START_TIMEOUT)  # ready: the warm-up entries are handled
        last = harness.last_id(RESULTS)
        harness.published.clear()
        pids = [running.process.pid]
        cpu_before, redis_before = cpu_seconds(pids), harness.counters()
        running.send("go\n")
        harness.publish(EVENTS, make_events(bed.events))
        harness.wait_for_length(RESULTS, len(warm) + bed.events, bed.work_timeout(bed.events))
        redis_used = harness.counters() - redis_before
        cpu = cpu_seconds(pids) - cpu_before
        memory, count = peak_memory_kb(pids), len(descendants(pids[0]))
        running.line(10.0)  # its report: all handled
    return _from_outcomes(
        bed, "plain consumer", "plain consumer", last, cpu, memory, count, redis_used
    )


@dataclass(frozen=True)
class PipelineRun:
    name: str
    pool: str = "threads"
    workers: int = 1
    #: Updates at once per worker process (its threads).
    concurrency: int = 64
    #: Batches at once per worker: processes under prefork (CASESYNC_BATCHES); 0 = default.
    batches: int = 0
    rate: float = 0.0  # events per second; 0: all at once
    count: int = 0  # events; 0: the bed's


def worker_argv(run: PipelineRun) -> list[str]:
    if run.pool == "gevent":
        # Celery patches for gevent only when started as `celery`; `casesync worker` is the same
        # worker started from Python, which cannot patch in time.
        return [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-P", "gevent"]
    return processes.worker_command()


def connection_env(bed: Bed) -> dict[str, str]:
    """The settings a worker cannot do without: where Redis and the simulator are."""
    return {
        "CASESYNC_REDIS_URL": bed.redis_url,
        "CASESYNC_THALAMUS_URL": bed.simulator.url,
        "CASESYNC_THALAMUS_TOUCHPOINT": DEFAULT_TOUCHPOINT,
        "CASESYNC_THALAMUS_TOKEN": DEFAULT_TOKEN,
    }


def worker_env(bed: Bed, run: PipelineRun) -> dict[str, str]:
    env = {
        **connection_env(bed),
        "CASESYNC_CONCURRENCY": str(run.concurrency),
        "CASESYNC_POOL": "threads" if run.pool == "gevent" else run.pool,
    }
    if run.batches:
        env["CASESYNC_BATCHES"] = str(run.batches)
    return env


def pipeline(bed: Bed, run: PipelineRun) -> Measurement:
    """(c) real workers: events published at once (or paced), waiting for every outcome."""
    bed.fresh()
    harness = bed.harness
    count = run.count or bed.events
    warm = make_events(run.concurrency * run.workers, first_case=4001)
    with contextlib.ExitStack() as stack:
        pids = [_start_worker(stack, bed, run, number) for number in range(run.workers)]
        harness.publish(EVENTS, warm)
        if harness.wait_for_length(RESULTS, len(warm), START_TIMEOUT) < len(warm):
            raise BenchError(f"{run.name}: the warm-up did not finish; see {bed.logs}")
        last = harness.last_id(RESULTS)
        harness.published.clear()
        cpu_before, redis_before = cpu_seconds(pids), harness.counters()
        events = make_events(count)
        if run.rate:
            harness.publish_paced(EVENTS, events, run.rate)
        else:
            harness.publish(EVENTS, events)
        harness.wait_for_length(RESULTS, len(warm) + count, bed.work_timeout(count))
        redis_used = harness.counters() - redis_before
        cpu = cpu_seconds(pids) - cpu_before
        memory, total = peak_memory_kb(pids), sum(len(descendants(pid)) for pid in pids)
    return _from_outcomes(bed, run.name, "pipeline", last, cpu, memory, total, redis_used)


def _start_worker(
    stack: contextlib.ExitStack[bool | None], bed: Bed, run: PipelineRun, n: int
) -> int:
    argv = worker_argv(run)
    if run.pool == "gevent":
        argv += ["-c", str(run.concurrency), "-Q", QUEUE, "--task-events", "-l", "INFO"]
    log = stack.enter_context((bed.logs / f"{run.name}-{bed.latency_ms:g}-{n}.log").open("wb"))
    process = processes.start_process(argv, worker_env(bed, run), log)
    stack.callback(processes.stop_process, process)
    return process.pid


def _from_outcomes(
    bed: Bed,
    name: str,
    side: str,
    last: str,
    cpu: float,
    memory: int,
    count: int,
    redis_used: RedisCounters,
) -> Measurement:
    matched = match_outcomes(bed.harness.published, bed.harness.outcomes_after(RESULTS, last))
    expected = len(bed.harness.published)
    if len(matched.latencies_ms) < expected:
        raise BenchError(f"{name}: {len(matched.latencies_ms)} of {expected} outcomes arrived")
    return Measurement(
        name=name,
        side=side,
        latency_ms=bed.latency_ms,
        events=expected,
        # Redis clock of the first event's entry to that of the last outcome.
        seconds=max(0.001, (matched.last_outcome_ms - matched.first_publish_ms) / 1000),
        cpu_seconds=cpu,
        peak_memory_kb=memory,
        latencies_ms=matched.latencies_ms,
        processes=count,
        redis=redis_used,
        not_applied=matched.not_applied,
        notes="latency: publish to outcome",
    )
