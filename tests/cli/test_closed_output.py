"""Every command exits quietly when its reader goes away (``casesync config | head -1``).

Real processes and real pipes: the broken pipe is the operating system's, not a mock's.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import redis

from settings import keys
from tests.conftest import DeadLetterFactory, case_event


def _run_with_no_reader(*argv: str) -> subprocess.CompletedProcess[bytes]:
    """Run ``casesync argv`` writing to a pipe whose reading end is closed before it starts."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "cli.main", *argv],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=dict(os.environ),
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)


def _run_reading_one_line(*argv: str) -> tuple[bytes, subprocess.CompletedProcess[bytes]]:
    """Run ``casesync argv``, read its first line and close the pipe, as ``| head -1`` does."""
    with subprocess.Popen(
        [sys.executable, "-m", "cli.main", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        first = process.stdout.readline()
        process.stdout.close()
        stderr = process.stderr.read()
        code = process.wait(timeout=60)
    return first, subprocess.CompletedProcess(process.args, code, b"", stderr)


def test_config_exits_quietly_when_nothing_reads_its_output(db: redis.Redis) -> None:
    done = _run_with_no_reader("config")

    assert done.stderr == b""
    assert done.returncode == 0


def test_config_json_exits_quietly_when_nothing_reads_its_output(db: redis.Redis) -> None:
    done = _run_with_no_reader("config", "--json")

    assert done.stderr == b""
    assert done.returncode == 0


@pytest.mark.parametrize("options", [["--json"], []], ids=["json", "table"])
def test_dlq_list_stops_quietly_when_its_reader_takes_one_line(
    db: redis.Redis, dead_letter: DeadLetterFactory, options: list[str]
) -> None:
    # Far more than a pipe holds (64 KiB on Linux): the command is still writing when the
    # reader goes, so the pipe breaks under it, every time; print and rich alike.
    for n in range(600):
        dead_letter(case_event(f"e{n}", 10 + n), detail="Thalamus answered 503 " + "x" * 300)

    first, done = _run_reading_one_line("dlq", "list", "--limit", "0", *options)

    assert first.strip()
    assert done.stderr == b""
    assert done.returncode == 0


def test_status_exits_quietly_when_nothing_reads_its_output(db: redis.Redis) -> None:
    done = _run_with_no_reader("status", "--no-sample")

    assert done.stderr == b""
    assert done.returncode == 0


def test_a_command_that_finished_keeps_its_exit_code_when_its_output_is_closed(
    db: redis.Redis,
) -> None:
    # dlq show prints nothing to stdout for a missing id: it ends with its own code, 1.
    done = _run_with_no_reader("dlq", "show", "1-1")

    assert done.returncode == 1
    assert b"Traceback" not in done.stderr
    assert done.stderr.decode().startswith("casesync dlq: no dead letter 1-1")


@pytest.mark.parametrize("argv", [["dlq", "show", "--help"], ["status", "--help"]])
def test_help_exits_quietly_when_nothing_reads_it(argv: list[str]) -> None:
    done = _run_with_no_reader(*argv)

    assert done.stderr == b""
    assert done.returncode == 0


def test_an_unhealthy_status_cut_off_by_its_reader_still_exits_quietly(db: redis.Redis) -> None:
    db.set(keys.BREAKER_OPEN, "5 calls in a row failed (last: HTTP 503)")

    done = _run_with_no_reader("status", "--no-sample")

    assert done.stderr == b""
    assert done.returncode in (0, 1)
