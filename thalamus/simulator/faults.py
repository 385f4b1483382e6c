"""Injected faults: latency, 5xx and 429 answers, dropped connections, scripted answers per case.

Set at start from CLI flags and changed at run time through ``/_sim/faults`` and ``/_sim/script``.
Every random choice comes from one seeded ``random.Random``, so a run with ``--seed`` repeats.
A scripted answer for a case wins over the random faults; random faults are drawn once per
request from one uniform number, so their rates add up (to at most 1).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Action = Literal["pass", "respond", "drop", "apply_then_drop"]
Rate = float  # a probability in [0, 1]

ERROR_STATUSES = (500, 502, 503, 504)


class FaultSettings(BaseModel):
    """The random faults; the JSON of ``GET``/``POST /_sim/faults``."""

    model_config = ConfigDict(extra="forbid")

    latency_ms: float = Field(0.0, ge=0)
    jitter_ms: float = Field(0.0, ge=0)
    error_rate_500: Rate = Field(0.0, ge=0, le=1)
    error_rate_502: Rate = Field(0.0, ge=0, le=1)
    error_rate_503: Rate = Field(0.0, ge=0, le=1)
    error_rate_504: Rate = Field(0.0, ge=0, le=1)
    rate_429: Rate = Field(0.0, ge=0, le=1)
    retry_after: int = Field(1, ge=0)
    drop_rate: Rate = Field(0.0, ge=0, le=1)
    apply_then_drop_rate: Rate = Field(0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _rates_fit(self) -> FaultSettings:
        if sum(rate for _, rate in self.outcomes()) > 1.0 + 1e-9:
            raise ValueError("the fault rates add up to more than 1")
        return self

    def outcomes(self) -> list[tuple[ScriptedResponse, Rate]]:
        """Each random fault as the answer it gives, with its rate."""
        pairs = [
            (ScriptedResponse(drop=True), self.drop_rate),
            (ScriptedResponse(apply_then_drop=True), self.apply_then_drop_rate),
            (
                ScriptedResponse(status=429, headers={"Retry-After": str(self.retry_after)}),
                self.rate_429,
            ),
        ]
        for status in ERROR_STATUSES:
            pairs.append((ScriptedResponse(status=status), getattr(self, f"error_rate_{status}")))
        return [(answer, rate) for answer, rate in pairs if rate > 0]


class ScriptedResponse(BaseModel):
    """One scripted answer: a response (``status``), ``drop``, ``apply_then_drop``, or none of
    these to answer normally; ``delay_ms`` waits first in every case."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: int | None = Field(None, ge=100, le=599)
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = None
    drop: bool = False
    apply_then_drop: bool = False
    delay_ms: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _one_action(self) -> ScriptedResponse:
        if sum([self.status is not None, self.drop, self.apply_then_drop]) > 1:
            raise ValueError("give at most one of status, drop, apply_then_drop")
        return self

    @property
    def action(self) -> Action:
        if self.drop:
            return "drop"
        if self.apply_then_drop:
            return "apply_then_drop"
        return "pass" if self.status is None else "respond"


class Script(BaseModel):
    """The body of ``POST /_sim/script``: the next answers for one case (and method, if given)."""

    model_config = ConfigDict(extra="forbid")

    caseId: int
    method: str | None = None
    responses: list[ScriptedResponse]


@dataclass(frozen=True)
class Decision:
    """What to do with one request: wait ``delay_s``, then ``answer``'s action."""

    delay_s: float
    answer: ScriptedResponse = field(default_factory=ScriptedResponse)


class Faults:
    """The fault settings in force, the scripts, and the seeded random source."""

    def __init__(self, settings: FaultSettings, seed: int | None) -> None:
        self.settings = settings
        self._rng = random.Random(seed)
        self._outcomes = settings.outcomes()
        self._scripts: dict[tuple[int, str], deque[ScriptedResponse]] = {}

    def update(self, changes: Mapping[str, Any]) -> FaultSettings:
        """Change some settings (the others stay); raises pydantic's ValidationError if bad."""
        settings = FaultSettings.model_validate({**self.settings.model_dump(), **changes})
        self.settings = settings
        self._outcomes = settings.outcomes()
        return settings

    def script(self, case_id: int, method: str | None, answers: Iterable[ScriptedResponse]) -> None:
        """Replace the script of a case (for one method or ``*`` any); empty clears it."""
        key = (case_id, (method or "*").upper())
        self._scripts[key] = deque(answers)
        if not self._scripts[key]:
            del self._scripts[key]

    def scripts(self) -> dict[str, list[dict[str, Any]]]:
        return {
            f"{case_id} {method}": [answer.model_dump() for answer in queue]
            for (case_id, method), queue in self._scripts.items()
        }

    def decide(self, case_id: int | None, method: str) -> Decision:
        """The fault for one API request; consumes a scripted answer when one applies."""
        answer = self._scripted(case_id, method) or self._random()
        delay_ms = answer.delay_ms + self.settings.latency_ms
        if self.settings.jitter_ms:
            delay_ms += self._rng.uniform(0.0, self.settings.jitter_ms)
        return Decision(delay_s=delay_ms / 1000.0, answer=answer)

    def _scripted(self, case_id: int | None, method: str) -> ScriptedResponse | None:
        if case_id is None or not self._scripts:
            return None
        for key in ((case_id, method.upper()), (case_id, "*")):
            queue = self._scripts.get(key)
            if queue:
                answer = queue.popleft()
                if not queue:
                    del self._scripts[key]
                return answer
        return None

    def _random(self) -> ScriptedResponse:
        if not self._outcomes:
            return _NORMAL
        draw = self._rng.random()
        for answer, rate in self._outcomes:
            if draw < rate:
                return answer
            draw -= rate
        return _NORMAL


_NORMAL = ScriptedResponse()
