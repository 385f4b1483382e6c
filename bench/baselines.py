"""The two baselines, each run as its own process: ``python -m bench.baselines http|stream ...``.

- ``http``: a bare loop of the same PUTs, a thread pool over one shared ``httpx.Client``: what
  one Python process can send at that concurrency, the floor of CPU per event.
- ``stream``: a plain consumer-group loop without Celery doing the same work per entry
  (XREADGROUP a batch, PUT, XADD the outcome and XACK in one MULTI), the floor of a stream
  consumer.

Both speak the same little protocol on standard input and output, so the parent can sample
/proc exactly around the measured work: they warm up and print ``ready``; on ``go`` they do the
work and print one JSON line; they exit when standard input closes.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import redis

TIMEOUT = httpx.Timeout(10.0)
#: The most seconds a baseline works before it gives up and reports what it did.
WORK_LIMIT = 600.0


def http_client(url: str, concurrency: int, touchpoint: str, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=url,
        timeout=TIMEOUT,
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        headers={
            "Accept": "application/json",
            "Thalamus-Touchpoint": touchpoint,
            "Thalamus-Token": token,
        },
    )


def put(client: httpx.Client, event: dict[str, Any]) -> int:
    """The PUT an event becomes: its ``data`` less the case id."""
    body = {key: value for key, value in event["data"].items() if key != "caseInstanceId"}
    response = client.put(f"/api/v4/cases/{event['data']['caseInstanceId']}", json=body)
    response.read()
    return response.status_code


def run_http(args: argparse.Namespace) -> dict[str, Any]:
    events = [json.loads(line) for line in sys.stdin.readline().split("\x1e") if line]
    client = http_client(args.url, args.concurrency, args.touchpoint, args.token)

    def timed(event: dict[str, Any]) -> float:
        started = time.perf_counter()
        status = put(client, event)
        if status != 201:
            raise RuntimeError(f"PUT answered {status}")
        return (time.perf_counter() - started) * 1000

    with client, ThreadPoolExecutor(args.concurrency) as pool:
        list(pool.map(timed, events[: args.concurrency]))  # warm-up: connections, threads
        _handshake()
        started = time.perf_counter()
        latencies = list(pool.map(timed, events[args.concurrency :]))
        seconds = time.perf_counter() - started
    return {"events": len(latencies), "seconds": seconds, "latencies_ms": latencies}


class StreamLoop:
    """XREADGROUP up to the free slots, PUT in a thread, outcome and XACK in one MULTI."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.redis = redis.Redis.from_url(args.redis, decode_responses=True, socket_timeout=10)
        self.http = http_client(args.url, args.concurrency, args.touchpoint, args.token)
        self.slots = threading.Semaphore(args.concurrency)
        self.handled = 0
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(args.concurrency)
        try:
            self.redis.xgroup_create(args.stream, args.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def handle(self, entry_id: str, fields: dict[str, str]) -> None:
        try:
            event = json.loads(fields["event"])
            status = put(self.http, event)
            outcome = {
                "specversion": "1.0",
                "source": "bench-plain",
                "type": "casesync.update.applied" if status == 201 else "casesync.update.failed",
                "data": {"requestId": event["id"], "httpStatus": status},
            }
            pipe = self.redis.pipeline(transaction=True)
            pipe.xadd(self.args.results, {"event": json.dumps(outcome)})
            pipe.xack(self.args.stream, self.args.group, entry_id)
            pipe.execute()
        finally:
            with self.lock:
                self.handled += 1
            self.slots.release()

    def read(self) -> None:
        if not self.slots.acquire(timeout=0.1):
            return
        free = 1
        while free < self.args.concurrency and self.slots.acquire(blocking=False):
            free += 1
        reply: Any = self.redis.xreadgroup(
            self.args.group, "plain", {self.args.stream: ">"}, count=free, block=100
        )
        entries = reply[0][1] if reply else []
        for entry_id, fields in entries:
            self.pool.submit(self.handle, entry_id, fields)
        for _ in range(free - len(entries)):
            self.slots.release()

    def until(self, count: int) -> int:
        deadline = time.monotonic() + WORK_LIMIT
        while self.handled < count and time.monotonic() < deadline:
            self.read()
        return self.handled

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.http.close()
        self.redis.close()


def run_stream(args: argparse.Namespace) -> dict[str, Any]:
    loop = StreamLoop(args)
    try:
        loop.until(args.warmup)
        _handshake()
        started = time.perf_counter()
        handled = loop.until(args.warmup + args.events) - args.warmup
        return {"events": handled, "seconds": time.perf_counter() - started}
    finally:
        loop.close()


def _handshake() -> None:
    """Say ``ready`` and wait for ``go``: the parent samples /proc in between."""
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baselines")
    parser.add_argument("mode", choices=["http", "stream"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--touchpoint", default="REST01")
    parser.add_argument("--token", default="sim-token")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--redis", default="")
    parser.add_argument("--stream", default="casesync:events")
    parser.add_argument("--results", default="casesync:results")
    parser.add_argument("--group", default="bench-plain")
    parser.add_argument("--events", type=int, default=0, help="stream: entries to handle")
    parser.add_argument("--warmup", type=int, default=0, help="stream: entries before ready")
    args = parser.parse_args(argv)
    result = run_http(args) if args.mode == "http" else run_stream(args)
    print(json.dumps(result), flush=True)
    sys.stdin.read()  # stay alive (for the parent's last /proc sample) until told to go
    return 0


if __name__ == "__main__":
    sys.exit(main())
