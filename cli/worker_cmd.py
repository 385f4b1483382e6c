"""``casesync worker``: one complete node, a Celery worker that also reads the events stream."""

from __future__ import annotations

import argparse
from typing import Any

from settings import Settings, SettingsError, load_settings
from tasks.observability import prepare_metrics_dir


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "worker",
        help="run a worker (extra options go to celery worker, e.g. --loglevel=INFO)",
    )
    parser.set_defaults(run=run, accepts_extra=True)


def celery_worker_argv(settings: Settings, extra: list[str]) -> list[str]:
    """The ``celery worker`` arguments of a casesync worker; options given win over settings."""
    if settings.thalamus_url is None:
        raise SettingsError("invalid setting CASESYNC_THALAMUS_URL: required by the worker")
    argv = ["worker", "--queues", settings.task_queue]
    if not any(arg.startswith(("--pool", "-P")) for arg in extra):
        argv += ["--pool", settings.pool]
    if not any(arg.startswith(("--concurrency", "-c")) for arg in extra):
        # The pool runs batches; each batch's updates share the process's own threads.
        argv += ["--concurrency", str(settings.batches)]
    if not any(arg.startswith(("--loglevel", "-l")) for arg in extra):
        argv += ["--loglevel", settings.log_level]
    return argv + extra


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    argv = celery_worker_argv(settings, list(args.extra))
    # Before prometheus-client is first imported (by the app's modules): it picks its
    # multiprocess mode then.
    prepare_metrics_dir(settings.metrics_port)
    from tasks.app import create_app

    create_app(settings).worker_main(argv)
    return 0
