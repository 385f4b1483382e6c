"""The soak: casesync under steady load with faults sprinkled in, for a long time.

It measures the capacity of two workers briefly (the pipeline scenario of :mod:`bench.scenarios`,
no faults), then publishes at half of it for the whole duration against the simulator with 1 %
503 answers and 0.5 % updates applied whose answer is then dropped, two workers on default
settings (so the lease and claim times are a deployment's), restarting a worker every few
minutes as :mod:`bench.soak_plan` says. It samples each worker's resident memory, keeps the
books in :class:`bench.soak_ledger.SoakLedger`, and at the end waits (bounded) until every event
has its outcome, then checks the comments on every case the run touched.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench.scenarios import (
    EVENTS,
    RESULTS,
    START_TIMEOUT,
    Bed,
    BenchError,
    PipelineRun,
    pipeline,
)
from bench.soak_fleet import Fleet, Incarnation, mb
from bench.soak_ledger import Reconciliation, SoakLedger, WindowLatency
from bench.soak_plan import Restart, SoakPlan
from bench.suite import Options, test_bed
from bench.workload import CASES, event_json, make_events
from ops import processes

DEAD_LETTERS = "casesync:dead-letter"
#: Updates at once per worker: casesync's default, as the soak's workers run on defaults.
CONCURRENCY = 32
#: Events per pipelined XADD while publishing, and outcomes per XRANGE while reading.
READ_CHUNK = 1000
#: Seconds between two reads of the results stream, and between two memory samples.
READ_EVERY = 1.0
SAMPLE_EVERY = 10.0
#: Seconds between two progress lines (also one at each restart).
PROGRESS_EVERY = 60.0
#: Pause of the publishing loop; events due in the meantime go out together.
TICK = 0.01
#: Seconds after the end to read on for a second outcome of some event.
SETTLE = 2.0


@dataclass(frozen=True)
class SoakOptions:
    duration: float
    #: Seconds between two worker restarts; also the length of a latency window.
    every: float = 300.0
    #: Events per second; 0 means half the measured capacity.
    rate: float = 0.0
    latency_ms: float = 20.0
    workers: int = 2
    capacity_events: int = 4000
    error_rate_503: float = 0.01
    apply_then_drop_rate: float = 0.005
    #: Seconds after its start when a worker's memory counts as "after warm-up".
    warmup: float = 60.0
    #: Seconds a worker gets to finish after SIGTERM before it is killed.
    stop_timeout: float = 30.0
    #: Longest wait after publishing stops for every outcome.
    drain_bound: float = 300.0
    logs: Path | None = None

    @property
    def plan(self) -> SoakPlan:
        return SoakPlan(self.duration, self.every, self.workers)


@dataclass
class SoakResult:
    options: SoakOptions
    capacity: float | None
    rate: float
    published_seconds: float
    drain_seconds: float
    drained: bool
    reconciliation: Reconciliation
    windows: list[WindowLatency]
    workers: list[Incarnation]
    redis: dict[str, Any] = field(default_factory=dict)
    restarts: list[Restart] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.reconciliation.ok


class Soak:
    """One soak run on a prepared test bed."""

    def __init__(self, bed: Bed, logs: Path, options: SoakOptions, say: Callable[[str], None]):
        self.bed, self.options, self.say = bed, options, say
        self.client: redis.Redis = bed.harness.client
        self.ledger = SoakLedger()
        self._started = time.monotonic()
        self.fleet = Fleet(bed, logs, options, self.elapsed)
        self._run = uuid.uuid4().hex[:8]
        self._sent = 0

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def prepare(self, stack: contextlib.ExitStack[bool | None]) -> None:
        """Faults on, workers started and warm (they handled a first batch), clock at zero."""
        self.bed.fresh()
        self.bed.simulator.admin.set_faults(
            error_rate_503=self.options.error_rate_503,
            apply_then_drop_rate=self.options.apply_then_drop_rate,
        )
        self.fleet.start()
        stack.callback(self.fleet.stop_all)
        warm = make_events(CONCURRENCY * self.options.workers, first_case=4001)
        self.bed.harness.publish(EVENTS, warm)
        if self.bed.harness.wait_for_length(RESULTS, len(warm), START_TIMEOUT) < len(warm):
            raise BenchError("soak: the workers did not handle their warm-up events")
        self.ledger.last_id = self.bed.harness.last_id(RESULTS)
        warmed = self.elapsed()
        self._started += warmed
        self.fleet.rebase(warmed)

    def publish_for(self, rate: float) -> float:
        """Publish at ``rate`` until the duration is over, restarting workers as planned;
        the seconds it took."""
        plan = self.options.plan
        restarts = list(plan.restarts)
        next_read = next_sample = 0.0
        next_progress = min(PROGRESS_EVERY, self.options.every)
        while (now := self.elapsed()) < self.options.duration:
            self._publish_due(min(int(now * rate) + 1, int(self.options.duration * rate)))
            if restarts and now >= restarts[0].at:
                restart = restarts.pop(0)
                self._progress(now)
                next_progress = now + min(PROGRESS_EVERY, self.options.every)
                self.say(f"{now:7.1f} s: {restart.signal_name} to worker {restart.worker}")
                self.fleet.restart(restart)
            if now >= next_read:
                self.read_outcomes()
                next_read = now + READ_EVERY
            if now >= next_sample:
                self.fleet.sample()
                next_sample = now + SAMPLE_EVERY
            if now >= next_progress:
                self._progress(now)
                next_progress = now + min(PROGRESS_EVERY, self.options.every)
            time.sleep(TICK)
        self._progress(self.elapsed())
        return self.elapsed()

    def _publish_due(self, due: int) -> None:
        while self._sent < due:
            count = min(READ_CHUNK, due - self._sent)
            events = [self._event(self._sent + offset) for offset in range(count)]
            pipe = self.client.pipeline(transaction=False)
            for event in events:
                pipe.xadd(EVENTS, {"event": event})
            for event, entry_id in zip(events, pipe.execute(), strict=True):
                self.ledger.publish(str(entry_id), event)
            self._sent += count

    def _event(self, number: int) -> str:
        return event_json(self._run, number, number % CASES + 1)

    def read_outcomes(self) -> None:
        """Take in every outcome written since the last read."""
        while True:
            low = f"({self.ledger.last_id}" if self.ledger.last_id else "-"
            reply: Any = self.client.xrange(RESULTS, min=low, count=READ_CHUNK)
            self.ledger.add_outcomes(
                (str(entry_id), json.loads(fields["event"])) for entry_id, fields in reply
            )
            if len(reply) < READ_CHUNK:
                return

    def drain(self) -> tuple[float, bool]:
        """Wait (bounded) until every published event has its outcome; (seconds, all came)."""
        self.fleet.wait_for_restart()
        began = time.monotonic()
        deadline = began + self.options.drain_bound
        self.read_outcomes()
        while not self.ledger.complete and time.monotonic() < deadline:
            time.sleep(READ_EVERY)
            self.read_outcomes()
        seconds = time.monotonic() - began
        time.sleep(SETTLE)  # a second outcome of some event may still be on its way
        self.read_outcomes()
        self.fleet.sample()
        return seconds, self.ledger.complete

    def comments_on_cases(self) -> dict[int, list[str]]:
        """The comment texts on every case the run touched, as the simulator holds them now."""
        admin = self.bed.simulator.admin
        return {
            case_id: [c["description"] for c in admin.case(case_id)["case"]["comments"]]
            for case_id in sorted(self.ledger.cases())
        }

    def redis_memory(self) -> dict[str, Any]:
        memory: Any = self.client.info("memory")
        # An estimate from a few sampled entries: outcomes carry the case, comments and all.
        results: Any = self.client.memory_usage(RESULTS) or 0
        return {
            "used_memory_mb": round(int(memory["used_memory"]) / 2**20, 1),
            "used_memory_peak_mb": round(int(memory["used_memory_peak"]) / 2**20, 1),
            "results_stream_mb": round(int(results) / 2**20, 1),
            "results_length": int(self.client.xlen(RESULTS)),
            "events_length": int(self.client.xlen(EVENTS)),
            "dead_letters": int(self.client.xlen(DEAD_LETTERS)),
        }

    def _progress(self, now: float) -> None:
        ledger = self.ledger
        memory = ", ".join(
            f"worker {item.slot}: " + (f"{mb(item.rss_last_kb)} MB" if item.rss_last_kb else "-")
            for item in self.fleet.current
        )
        self.say(
            f"{now:7.1f} s: {len(ledger.published):,} published, {len(ledger.counts):,} with "
            f"an outcome; RSS {memory}"
        )


def measure_capacity(bed: Bed, options: SoakOptions) -> float:
    """Events per second of the soak's workers with no faults (events published at once)."""
    run = PipelineRun(
        "soak capacity",
        workers=options.workers,
        concurrency=CONCURRENCY,
        count=options.capacity_events,
    )
    return pipeline(bed, run).events_per_second


def run_soak(options: SoakOptions, say: Callable[[str], None]) -> SoakResult:
    """The whole soak, in its own embedded Redis and simulator; stops everything it started."""
    with contextlib.ExitStack() as stack:
        logs = options.logs or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        redis_url = stack.enter_context(processes.embedded_redis())
        suite = Options(events=options.capacity_events, concurrency=CONCURRENCY, logs=logs)
        bed = stack.enter_context(test_bed(redis_url, options.latency_ms, suite, logs))
        return _soak_on(bed, logs, options, say, stack)


def _soak_on(
    bed: Bed,
    logs: Path,
    options: SoakOptions,
    say: Callable[[str], None],
    stack: contextlib.ExitStack[bool | None],
) -> SoakResult:
    capacity = None if options.rate else measure_capacity(bed, options)
    rate = options.rate or 0.5 * (capacity or 0.0)
    if capacity is not None:
        say(f"capacity of {options.workers} workers: {capacity:.0f} events/s (no faults)")
    say(f"soak: {options.duration:g} s at {rate:.0f} events/s, a restart every {options.every:g} s")
    soak = Soak(bed, logs, options, say)
    soak.prepare(stack)
    redis_before = soak.redis_memory()
    published_seconds = soak.publish_for(rate)
    drain_seconds, drained = soak.drain()
    say(f"drained in {drain_seconds:.1f} s" if drained else "not every outcome came")
    reconciliation = soak.ledger.reconcile(soak.comments_on_cases())
    windows = soak.ledger.latencies_by_window(
        min(event.entry_ms for event in soak.ledger.published.values()),
        options.every,
        len(options.plan.windows),
    )
    return SoakResult(
        options,
        capacity,
        rate,
        published_seconds,
        drain_seconds,
        drained,
        reconciliation,
        windows,
        soak.fleet.all,
        {"after_warmup": redis_before, "at_end": soak.redis_memory()},
        options.plan.restarts,
    )
