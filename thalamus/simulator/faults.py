"""What the simulator does wrong on purpose: latency, error rates, 429s, dropped connections,
and scripted answers for the next updates of one case."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import asdict, dataclass, fields
from typing import Any

ERROR_STATUSES = (500, 502, 503, 504)


@dataclass
class Faults:
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    rate_500: float = 0.0
    rate_502: float = 0.0
    rate_503: float = 0.0
    rate_504: float = 0.0
    rate_429: float = 0.0
    retry_after: int = 1
    drop_rate: float = 0.0

    def update(self, changes: dict[str, Any]) -> None:
        """Apply the given settings; an unknown name is a ValueError naming it."""
        known = {f.name: f.type for f in fields(self)}
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown fault {name!r}; known: {', '.join(sorted(known))}")
            setattr(self, name, int(value) if name == "retry_after" else float(value))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Answer:
    """A scripted or random answer standing in for the real one."""

    status: int | None = None  # None: the real answer
    headers: dict[str, str] | None = None
    body: Any = None
    drop: bool = False  # close the connection without answering
    apply_then_drop: bool = False  # apply the update, then close without answering

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Answer:
        allowed = {"status", "headers", "body", "drop", "apply_then_drop"}
        unknown = set(raw) - allowed
        if unknown:
            raise ValueError(f"unknown answer keys: {', '.join(sorted(unknown))}")
        return cls(
            status=raw.get("status"),
            headers=raw.get("headers"),
            body=raw.get("body"),
            drop=bool(raw.get("drop")),
            apply_then_drop=bool(raw.get("apply_then_drop")),
        )


class FaultPlan:
    """Decides, per request, whether a fault stands in for the real answer."""

    def __init__(self, seed: int | None = None) -> None:
        self.faults = Faults()
        self.scripts: dict[int, deque[Answer]] = {}
        self._random = random.Random(seed)

    def delay(self) -> float:
        """Seconds to wait before answering."""
        jitter = self._random.uniform(0, self.faults.jitter_ms) if self.faults.jitter_ms else 0
        return max(0.0, self.faults.latency_ms + jitter) / 1000

    def scripted(self, case_id: int | None) -> Answer | None:
        """The next scripted answer for an update of ``case_id``, if one is queued."""
        queue = self.scripts.get(case_id) if case_id is not None else None
        if not queue:
            return None
        answer = queue.popleft()
        if not queue:
            del self.scripts[case_id]  # type: ignore[arg-type]
        return answer

    def random_answer(self) -> Answer | None:
        """A random fault by the configured rates, or None for the real answer."""
        faults = self.faults
        roll = self._random.random()
        if roll < faults.drop_rate:
            return Answer(drop=True)
        roll -= faults.drop_rate
        if roll < faults.rate_429:
            return Answer(429, {"Retry-After": str(faults.retry_after)})
        roll -= faults.rate_429
        for status in ERROR_STATUSES:
            rate = getattr(faults, f"rate_{status}")
            if roll < rate:
                return Answer(status)
            roll -= rate
        return None
