"""The soak's books: every event published against the outcomes read from ``casesync:results``
and the comments the simulator holds, reconciled as a user would check them.

Pure: the events and outcomes come in as values, the figures go out; :mod:`bench.soak` feeds it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.measure import entry_ms, percentile

APPLIED = "casesync.update.applied"
SUPERSEDED = "casesync.update.superseded"
DEADLETTERED = "casesync.update.deadlettered"
#: Outcomes after which the event's comments are on its case (contract §4).
COMMENTS_POSTED = frozenset({APPLIED, SUPERSEDED})


@dataclass(frozen=True)
class Published:
    """One event as it went in: its entry time (Redis clock, ms), case and comment texts."""

    entry_ms: int
    case_id: int
    comments: tuple[str, ...]


@dataclass(frozen=True)
class CommentCheck:
    #: Comments of events with an applied or superseded outcome on their case more than once.
    posted_twice: int
    #: ... and not on their case at all.
    missing: int


@dataclass(frozen=True)
class WindowLatency:
    number: int
    events: int
    p50_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True)
class Reconciliation:
    """What a user checks after the run; ``ok`` when nothing was lost, doubled or posted twice."""

    events_in: int
    #: Events with at least one outcome.
    outcomes_out: int
    #: Entries of the results stream for this run's events (two for a doubled event...).
    outcome_entries: int
    missing: int
    doubled: int
    #: Outcome entries whose request id this run never published.
    unexpected: int
    #: First outcome of each event, by type (``applied``, ``superseded``...).
    by_type: dict[str, int]
    #: Dead-lettered events by reason.
    dead_letter_reasons: dict[str, int]
    comments: CommentCheck

    @property
    def ok(self) -> bool:
        return (
            self.events_in == self.outcomes_out
            and self.missing == 0
            and self.doubled == 0
            and self.comments.posted_twice == 0
            and self.comments.missing == 0
        )


@dataclass
class SoakLedger:
    published: dict[str, Published] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    #: Request id -> (entry ms, type) of the event's first outcome.
    first: dict[str, tuple[int, str]] = field(default_factory=dict)
    reasons: Counter[str] = field(default_factory=Counter)
    unexpected: int = 0
    #: The newest results entry taken in, to read on from.
    last_id: str = ""

    def publish(self, entry_id: str, event: str) -> None:
        """Note one event (its JSON) added to the events stream as entry ``entry_id``."""
        parsed = json.loads(event)
        data = parsed["data"]
        texts = tuple(str(comment["description"]) for comment in data.get("comments") or [])
        self.published[str(parsed["id"])] = Published(
            entry_ms(entry_id), int(data["caseInstanceId"]), texts
        )

    def add_outcomes(self, outcomes: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        """Take in outcome events read from the results stream, with their entry ids."""
        for entry_id, outcome in outcomes:
            self.last_id = entry_id
            data = outcome.get("data") or {}
            request = str(data.get("requestId"))
            if request not in self.published:
                self.unexpected += 1
                continue
            self.counts[request] += 1
            kind = str(outcome.get("type"))
            if request not in self.first:
                self.first[request] = (entry_ms(entry_id), kind)
                if kind == DEADLETTERED:
                    self.reasons[str(data.get("reason"))] += 1

    @property
    def missing(self) -> int:
        return len(self.published) - len(self.counts)

    @property
    def complete(self) -> bool:
        return self.missing == 0

    def latencies_by_window(self, start_ms: int, every_s: float, count: int) -> list[WindowLatency]:
        """Publish-to-first-outcome latency of the events published in each window."""
        by_window: list[list[float]] = [[] for _ in range(count)]
        for request, (outcome_ms, _) in self.first.items():
            sent = self.published[request].entry_ms
            number = int((sent - start_ms) / 1000 // every_s)
            by_window[max(0, min(count - 1, number))].append(float(outcome_ms - sent))
        return [_window_latency(number, values) for number, values in enumerate(by_window)]

    def comment_check(self, on_case: Mapping[int, Sequence[str]]) -> CommentCheck:
        """Each comment of an event applied or superseded should be on its case exactly once."""
        present = {case_id: Counter(texts) for case_id, texts in on_case.items()}
        twice = missing = 0
        for request, (_, kind) in self.first.items():
            if kind not in COMMENTS_POSTED:
                continue
            event = self.published[request]
            on_this_case = present.get(event.case_id, Counter())
            for text in event.comments:
                twice += on_this_case[text] > 1
                missing += on_this_case[text] == 0
        return CommentCheck(twice, missing)

    def cases(self) -> set[int]:
        return {event.case_id for event in self.published.values()}

    def reconcile(self, on_case: Mapping[int, Sequence[str]]) -> Reconciliation:
        return Reconciliation(
            events_in=len(self.published),
            outcomes_out=len(self.counts),
            outcome_entries=sum(self.counts.values()),
            missing=self.missing,
            doubled=sum(1 for count in self.counts.values() if count > 1),
            unexpected=self.unexpected,
            by_type=dict(Counter(kind.rpartition(".")[2] for _, kind in self.first.values())),
            dead_letter_reasons=dict(self.reasons),
            comments=self.comment_check(on_case),
        )


def _window_latency(number: int, values: list[float]) -> WindowLatency:
    return WindowLatency(
        number,
        len(values),
        percentile(values, 0.50),
        percentile(values, 0.99),
        max(values, default=float("nan")),
    )
