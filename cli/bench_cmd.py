"""``casesync bench``: the pipeline measured side by side with a bare httpx loop and a plain
stream consumer, against the simulator and an embedded Redis (``make bench``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DEFAULT_JSON = Path("bench/results/latest.json")
DEFAULT_SOAK_JSON = Path("bench/results/soak.json")


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "bench", help="measure the pipeline beside its baselines (events/s, CPU, latency)"
    )
    parser.add_argument("--events", type=int, help="events per measurement (default 2000)")
    parser.add_argument(
        "--quick", action="store_true", help="50 events, 0 ms only, no paced or two-worker run"
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where the JSON goes")
    parser.add_argument("--latencies", default="0,100", help="API latencies in ms, comma-separated")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrency of each side")
    parser.add_argument(
        "--pools",
        default="",
        help="pools to measure besides threads: prefork, gevent (if installed), comma-separated",
    )
    parser.add_argument(
        "--prefork-processes",
        type=int,
        default=2,
        help="prefork's processes (the concurrency is shared out)",
    )
    parser.add_argument("--logs", type=Path, help="keep the processes' logs in this folder")
    parser.add_argument(
        "--recovery",
        action="store_true",
        help="run only the crash-recovery scenario (a worker killed with SIGKILL mid-load)",
    )
    parser.add_argument(
        "--recovery-events", type=int, default=300, help="events of the recovery scenario"
    )
    parser.add_argument(
        "--recovery-bound",
        type=float,
        default=300.0,
        help="seconds the recovery scenario waits for every outcome before it reports '> bound'",
    )
    parser.add_argument(
        "--recovery-latency", type=float, default=20.0, help="API latency (ms) of that scenario"
    )
    parser.add_argument(
        "--replica",
        action="store_true",
        help="attach a replica to the embedded Redis, so the workers WAIT for it "
        "(CASESYNC_REDIS_WAIT_REPLICAS=0 measures the same without)",
    )
    _add_soak_arguments(parser.add_argument_group("soak (a long run under faults)"))
    parser.set_defaults(run=run)


def _duration(text: str) -> float:
    from bench.soak_plan import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _not_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:  # NaN too
        raise argparse.ArgumentTypeError(f"{text!r}: it must be 0 or more")
    return value


def _add_soak_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--soak",
        type=_duration,
        metavar="DURATION",
        help="run only the soak for this long (30m, 90s, 1h): half the measured capacity, "
        "1%% 503, 0.5%% dropped answers, a worker restart every 5 minutes",
    )
    group.add_argument(
        "--soak-rate",
        type=_not_negative,
        default=0.0,
        help="events/s instead of half the capacity (0: half the capacity)",
    )
    group.add_argument(
        "--soak-restart-every",
        type=_duration,
        default=300.0,
        metavar="DURATION",
        help="time between two worker restarts, and length of a latency window (default 5m)",
    )
    group.add_argument(
        "--soak-latency", type=_not_negative, default=20.0, help="API latency (ms) of the soak"
    )


def options_of(args: argparse.Namespace) -> Any:
    from bench.recovery import RecoveryRun
    from bench.suite import Options

    latencies = tuple(float(item) for item in args.latencies.split(",") if item.strip())
    if args.quick:
        latencies = (0.0,)
    recovery: RecoveryRun | None = RecoveryRun(
        args.recovery_events, args.recovery_bound, args.recovery_latency
    )
    if args.recovery:
        latencies = ()
    elif args.quick:
        recovery = None  # minutes of waiting, against the point of a quick run
    if args.logs is not None:
        args.logs.mkdir(parents=True, exist_ok=True)
    return Options(
        events=args.events or (50 if args.quick else 2000),
        latencies=latencies,
        concurrency=args.concurrency,
        pools=tuple(item.strip() for item in args.pools.split(",") if item.strip()),
        prefork_processes=args.prefork_processes,
        derived=not args.quick,
        logs=args.logs,
        recovery=recovery,
        replica=args.replica,
    )


def run(args: argparse.Namespace) -> int:
    if args.soak is not None:
        return run_soak(args)
    return run_suite(args)


def run_soak(args: argparse.Namespace) -> int:
    """The soak alone; exits 1 when an event was lost or doubled or a comment posted twice."""
    from bench import soak_report
    from bench.scenarios import BenchError
    from bench.soak import SoakOptions, run_soak
    from cli.output import Console

    # Plain text as it is (never markup), lines never wrapped, also in a file or a pipe.
    out = Console(markup=False, highlight=False, emoji=False, soft_wrap=True)
    if args.logs is not None:
        args.logs.mkdir(parents=True, exist_ok=True)
    json_path = DEFAULT_SOAK_JSON if args.json == DEFAULT_JSON else args.json
    options = SoakOptions(
        duration=args.soak,
        every=args.soak_restart_every,
        rate=args.soak_rate,
        latency_ms=args.soak_latency,
        # A short trial run still samples memory after warm-up, half-way to the first restart.
        warmup=min(60.0, args.soak_restart_every / 2),
        logs=args.logs,
    )
    try:
        result = run_soak(options, lambda text: out.print(text))
    except BenchError as exc:
        out.print(f"casesync bench --soak: {exc}")
        return 1
    for line in soak_report.lines(result):
        out.print(line)
    soak_report.write_json(json_path, result)
    out.print(f"JSON written to {json_path}")
    return 0 if result.ok else 1


def run_suite(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from bench import report
    from bench.scenarios import BenchError
    from bench.suite import run_suite
    from cli.output import Console

    # Wide enough for every column, also when the output goes to a file or a pipe.
    console = Console(width=max(160, Console().width))
    options = options_of(args)
    try:
        measurements = run_suite(options, console.print)
    except BenchError as exc:
        console.print(f"[red]casesync bench: {exc}[/red]")
        return 1
    if args.recovery:
        found = [report.recovery_target(measurements)]
    else:
        found = report.targets(measurements, max(options.latencies, default=0.0))
    report.print_report(console, measurements, found)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()}
    report.write_json(args.json, measurements, found, settings)
    console.print(f"JSON written to {args.json}")
    return 0
