"""The crash-recovery scenario: a worker killed with SIGKILL mid-load, a new one started at once.

Measured as a user would see it, with workers on default settings (so the visibility time-out
and the claim idle time are the ones a deployment has): the seconds from the new worker's start
until every event has an outcome, and what went wrong on the way (events left without an
outcome, events with two, comments posted twice on their case). The wait is bounded: when the
bound passes first, the figure is "> bound".
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.measure import (
    Measurement,
    Recovery,
    cpu_seconds,
    descendants,
    entry_ms,
    peak_memory_kb,
)
from bench.scenarios import (
    EVENTS,
    RESULTS,
    START_TIMEOUT,
    Bed,
    BenchError,
    connection_env,
)
from bench.workload import Harness, make_events, request_id
from ops import processes

NAME = "pipeline threads recovery"
#: Outcomes written before the kill: enough that the worker is in full flow, few enough that
#: most events are still queued or in flight when it dies.
KILL_AFTER = 60
#: Seconds to keep reading after the last missing outcome came, for a second one of any event.
SETTLE = 1.0
#: Seconds between two reads of the results stream while waiting.
POLL = 0.1


@dataclass(frozen=True)
class RecoveryRun:
    events: int = 300
    #: The longest wait, in seconds, for every event's outcome after the new worker started.
    bound: float = 300.0
    latency_ms: float = 20.0

    @property
    def kill_after(self) -> int:
        """Outcomes before the kill: ``KILL_AFTER``, or a fifth of a smaller run."""
        return max(1, min(KILL_AFTER, self.events // 5))


@dataclass
class Tally:
    """The outcomes of the run's events so far, read from the results stream as they come."""

    expected: frozenset[str]
    counts: Counter[str] = field(default_factory=Counter)
    #: Request id -> (entry ms, applied) of the event's first outcome.
    first: dict[str, tuple[int, bool]] = field(default_factory=dict)
    last_id: str = ""

    def add(self, outcomes: Sequence[tuple[str, dict[str, Any]]]) -> None:
        for entry_id, outcome in outcomes:
            self.last_id = entry_id
            request = str(outcome.get("data", {}).get("requestId"))
            if request not in self.expected:
                continue
            self.counts[request] += 1
            applied = outcome.get("type") == "casesync.update.applied"
            self.first.setdefault(request, (entry_ms(entry_id), applied))

    @property
    def complete(self) -> bool:
        return len(self.counts) == len(self.expected)

    @property
    def missing(self) -> int:
        return len(self.expected) - len(self.counts)

    @property
    def doubled(self) -> int:
        return sum(1 for count in self.counts.values() if count > 1)

    @property
    def not_applied(self) -> int:
        return sum(1 for _, applied in self.first.values() if not applied)


def comments_by_case(events: Sequence[str]) -> dict[int, list[str]]:
    """The comment texts each case should end up with, once each."""
    wanted: dict[int, list[str]] = {}
    for event in events:
        data = json.loads(event)["data"]
        texts = [comment["description"] for comment in data.get("comments") or []]
        wanted.setdefault(int(data["caseInstanceId"]), []).extend(texts)
    return wanted


def posted_twice(wanted: Mapping[int, Sequence[str]], on_case: Mapping[int, Sequence[str]]) -> int:
    """How many of the wanted comments are on their case more than once."""
    total = 0
    for case_id, texts in wanted.items():
        present = Counter(on_case.get(case_id, ()))
        total += sum(1 for text in texts if present[text] > 1)
    return total


@dataclass(frozen=True)
class Sample:
    """CPU seconds since start, peak memory (KiB) and process count of the workers so far."""

    cpu: float = 0.0
    memory_kb: int = 0
    processes: int = 0

    def then(self, process: subprocess.Popen[bytes]) -> Sample:
        """This sample and that of a worker that ran after these (memory: the larger peak)."""
        pids = [process.pid]
        return Sample(
            self.cpu + cpu_seconds(pids),
            max(self.memory_kb, peak_memory_kb(pids)),
            self.processes + len(descendants(process.pid)),
        )


def recovery(bed: Bed, run: RecoveryRun) -> Measurement:
    """Publish, run a worker until ``kill_after`` outcomes, SIGKILL it, start another at once,
    and wait (at most ``run.bound`` seconds) until every event has an outcome."""
    bed.fresh()
    events = make_events(run.events)
    tally = Tally(frozenset(request_id(event) for event in events))
    with contextlib.ExitStack() as stack:
        redis_before = bed.harness.counters()
        bed.harness.publish(EVENTS, events)
        sample = _kill_mid_load(stack, bed, run, tally)
        at_kill = len(tally.counts)
        sample, seconds, done = _restart(stack, bed, run, tally, sample)
        redis_used = bed.harness.counters() - redis_before
    twice = posted_twice(comments_by_case(events), _comments_on_cases(bed, events))
    found = Recovery(
        run.events, seconds, done, run.bound, at_kill, tally.missing, tally.doubled, twice
    )
    published = bed.harness.published
    first_entry = min(published.values())
    last = max((ms for ms, _ in tally.first.values()), default=first_entry)
    return Measurement(
        name=NAME,
        side="pipeline",
        latency_ms=bed.latency_ms,
        events=len(tally.first),
        # Redis clock of the first event's entry to that of the last first outcome.
        seconds=max(0.001, (last - first_entry) / 1000),
        cpu_seconds=sample.cpu,
        peak_memory_kb=sample.memory_kb,
        latencies_ms=[float(ms - published[rid]) for rid, (ms, _) in tally.first.items()],
        processes=sample.processes,
        redis=redis_used,
        not_applied=tally.not_applied,
        notes="latency: publish to outcome; two workers in turn, start-up included; "
        + found.describe(),
        recovery=found,
    )


def _kill_mid_load(
    stack: contextlib.ExitStack[bool | None], bed: Bed, run: RecoveryRun, tally: Tally
) -> Sample:
    """Run a worker until ``kill_after`` outcomes exist, then SIGKILL its process group."""
    first = _start_worker(stack, bed, 0)
    # XLEN every 20 ms, not the tally's reads, so the kill comes close after the count is reached
    # (the database is fresh: every entry of the results stream is an outcome of this run).
    written = bed.harness.wait_for_length(RESULTS, run.kill_after, START_TIMEOUT)
    if written < run.kill_after:
        raise BenchError(f"{NAME}: the first worker wrote {written} of {run.kill_after} outcomes")
    sample = Sample().then(first)  # before the kill: /proc forgets a dead process
    processes.kill_process(first)
    _read(bed.harness, tally)  # what it wrote before it died
    return sample


def _restart(
    stack: contextlib.ExitStack[bool | None],
    bed: Bed,
    run: RecoveryRun,
    tally: Tally,
    sample: Sample,
) -> tuple[Sample, float, bool]:
    """Start a new worker at once; the seconds until every event has an outcome, and whether
    that happened within the bound (else the seconds are the bound)."""
    restarted = time.monotonic()
    second = _start_worker(stack, bed, 1)
    done = _wait(bed.harness, tally, lambda t: t.complete, run.bound)
    seconds = time.monotonic() - restarted if done else run.bound
    time.sleep(SETTLE)  # a second outcome of some event may still be on its way
    _read(bed.harness, tally)
    return sample.then(second), seconds, done


def _start_worker(
    stack: contextlib.ExitStack[bool | None], bed: Bed, n: int
) -> subprocess.Popen[bytes]:
    # Only where Redis and the simulator are: every other setting is the default a user gets.
    log = stack.enter_context((bed.logs / f"{NAME}-{bed.latency_ms:g}-{n}.log").open("wb"))
    process = processes.start_process(processes.worker_command(), connection_env(bed), log)
    stack.callback(processes.stop_process, process)
    return process


def _read(harness: Harness, tally: Tally) -> None:
    """Take in the outcomes written since the last read."""
    tally.add(harness.outcomes_after(RESULTS, tally.last_id))


def _wait(harness: Harness, tally: Tally, done: Callable[[Tally], bool], timeout: float) -> bool:
    """Read outcomes until ``done(tally)`` or ``timeout`` seconds passed; whether it was done."""
    deadline = time.monotonic() + timeout
    _read(harness, tally)
    while not done(tally) and time.monotonic() < deadline:
        time.sleep(POLL)
        _read(harness, tally)
    return done(tally)


def _comments_on_cases(bed: Bed, events: Sequence[str]) -> dict[int, list[str]]:
    """The comment texts on each case of the run, as the simulator holds them now."""
    return {
        case_id: [c["description"] for c in bed.simulator.admin.case(case_id)["case"]["comments"]]
        for case_id in comments_by_case(events)
    }
