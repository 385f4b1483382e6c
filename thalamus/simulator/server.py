"""Runs the simulator on uvicorn: one process, one event loop, access log off.

``serve`` binds the socket itself, so ``--port 0`` works: the port the system picked is printed,
and written to ``port_file`` when one is given (how ``process.py`` learns it without races).
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import uvicorn

from thalamus.simulator.app import build_app
from thalamus.simulator.config import SimulatorConfig

log = logging.getLogger("casesync.simulator")


def serve(
    host: str,
    port: int,
    config: SimulatorConfig | None = None,
    *,
    port_file: Path | None = None,
    log_level: str = "warning",
) -> None:
    """Serve the simulator on ``host:port`` until SIGINT/SIGTERM."""
    app, _ = build_app(config or SimulatorConfig())
    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level=log_level,
            access_log=False,
            lifespan="off",
            server_header=False,
            # Unanswered connections are cut at shutdown instead of holding the process.
            timeout_graceful_shutdown=2,
            backlog=2048,
        )
    )
    print(f"casesync simulator listening on http://{host}:{bound}", flush=True)
    if port_file is not None:
        port_file.write_text(str(bound), encoding="utf-8")
    server.run(sockets=[sock])


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
