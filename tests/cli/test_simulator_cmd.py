"""``casesync simulator`` takes the simulator's flags and turns them into its configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.main import build_parser
from thalamus.simulator.options import config_from_args


def test_simulator_flags_become_the_start_up_configuration() -> None:
    args = build_parser().parse_args(
        [
            "simulator",
            "--port",
            "0",
            "--catalogue",
            "cat.json",
            "--latency-ms",
            "5",
            "--jitter-ms",
            "2",
            "--error-rate-503",
            "0.1",
            "--rate-429",
            "0.05",
            "--retry-after",
            "3",
            "--drop-rate",
            "0.01",
            "--require-login",
            "--session-ttl",
            "60",
            "--touchpoint",
            "TP9",
            "--token",
            "t",
            "--seed",
            "11",
        ]
    )
    config = config_from_args(args)
    assert config.catalogue == Path("cat.json")
    assert (config.faults.latency_ms, config.faults.jitter_ms) == (5, 2)
    assert (config.faults.error_rate_503, config.faults.rate_429) == (0.1, 0.05)
    assert (config.faults.retry_after, config.faults.drop_rate) == (3, 0.01)
    assert (config.require_login, config.session_ttl, config.seed) == (True, 60, 11)
    assert (config.touchpoint, config.token) == ("TP9", "t")


def test_an_empty_touchpoint_turns_the_credential_check_off() -> None:
    args = build_parser().parse_args(["simulator", "--touchpoint", "", "--token", ""])
    config = config_from_args(args)
    assert (config.touchpoint, config.token) == (None, None)


def test_a_bad_fault_rate_names_its_flag() -> None:
    args = build_parser().parse_args(["simulator", "--drop-rate", "2"])
    with pytest.raises(ValueError, match="--drop-rate"):
        config_from_args(args)
