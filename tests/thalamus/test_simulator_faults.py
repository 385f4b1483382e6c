"""The fault draw of the simulator, without HTTP."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from thalamus.simulator.faults import Faults, FaultSettings, ScriptedResponse


def _actions(faults: Faults, n: int) -> list[str]:
    return [faults.decide(1, "PUT").answer.action for _ in range(n)]


def test_the_same_seed_gives_the_same_faults() -> None:
    settings = FaultSettings(drop_rate=0.3, error_rate_503=0.3, jitter_ms=10)
    first, second = Faults(settings, seed=42), Faults(settings, seed=42)
    assert _actions(first, 50) == _actions(second, 50)


def test_fault_rates_are_roughly_honoured() -> None:
    faults = Faults(FaultSettings(error_rate_500=0.25, rate_429=0.25), seed=1)
    statuses = [faults.decide(None, "PUT").answer.status for _ in range(4000)]
    assert 800 < statuses.count(500) < 1200
    assert 800 < statuses.count(429) < 1200


def test_a_429_carries_the_retry_after_setting() -> None:
    faults = Faults(FaultSettings(rate_429=1.0, retry_after=7), seed=None)
    assert faults.decide(1, "GET").answer.headers == {"Retry-After": "7"}


def test_rates_that_add_up_past_one_are_refused() -> None:
    with pytest.raises(ValidationError):
        FaultSettings(drop_rate=0.6, error_rate_500=0.6)


def test_scripted_answers_come_first_in_order_then_normal_service() -> None:
    faults = Faults(FaultSettings(), seed=None)
    faults.script(5, "PUT", [ScriptedResponse(status=503), ScriptedResponse(drop=True)])
    assert faults.decide(5, "GET").answer.action == "pass"  # another method
    assert faults.decide(6, "PUT").answer.action == "pass"  # another case
    assert _actions_on(faults, 5, 3) == ["respond", "drop", "pass"]


def _actions_on(faults: Faults, case_id: int, n: int) -> list[str]:
    return [faults.decide(case_id, "PUT").answer.action for _ in range(n)]


def test_a_scripted_answer_takes_one_action() -> None:
    with pytest.raises(ValidationError):
        ScriptedResponse(status=503, drop=True)


def test_latency_and_jitter_add_up() -> None:
    faults = Faults(FaultSettings(latency_ms=100, jitter_ms=50), seed=3)
    delays = [faults.decide(1, "PUT").delay_s for _ in range(100)]
    assert all(0.1 <= delay <= 0.15 for delay in delays)
