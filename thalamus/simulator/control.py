"""The ``/_sim/`` admin routes: faults, scripts, the request record, a case's state, reset.

They are never subject to injected faults or credentials, so a test can always steer the
simulator, and ``/_sim/isAlive`` tells that the process is up whatever faults it was started with.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from thalamus.simulator.faults import Script

if TYPE_CHECKING:
    from thalamus.simulator.app import Simulator

PREFIX = "/_sim"


def control_routes(sim: Simulator) -> list[Route]:
    """The admin routes bound to one simulator."""

    async def is_alive(request: Request) -> Response:
        return JSONResponse({"isAlive": "1"})

    async def get_faults(request: Request) -> Response:
        return JSONResponse(_faults_view(sim))

    async def set_faults(request: Request) -> Response:
        try:
            changes = await _json_object(request)
            sim.faults.update(changes)
        except (ValueError, ValidationError) as exc:
            return _bad(exc)
        return JSONResponse(_faults_view(sim))

    async def script(request: Request) -> Response:
        try:
            given = Script.model_validate(await _json_object(request))
        except (ValueError, ValidationError) as exc:
            return _bad(exc)
        sim.faults.script(given.caseId, given.method, given.responses)
        return JSONResponse(_faults_view(sim))

    async def requests(request: Request) -> Response:
        raw = request.query_params.get("caseId")
        case_id = int(raw) if raw and raw.isdigit() else None
        return JSONResponse({"requests": sim.record.entries(case_id)})

    async def clear_requests(request: Request) -> Response:
        sim.record.clear()
        return JSONResponse({"requests": []})

    async def case(request: Request) -> Response:
        raw = request.path_params["case_id"]
        stored = sim.store.get(int(raw)) if raw.isdigit() else None
        if stored is None:
            return JSONResponse({"error": f"no case {raw}"}, status_code=404)
        return JSONResponse({"case": stored.to_json(), "updates": stored.updates})

    async def reset(request: Request) -> Response:
        sim.reset()
        return JSONResponse(_faults_view(sim))

    async def expire_sessions(request: Request) -> Response:
        sim.sessions.clear()
        return JSONResponse({"sessions": 0})

    return [
        Route(f"{PREFIX}/isAlive", is_alive, methods=["GET"]),
        Route(f"{PREFIX}/faults", get_faults, methods=["GET"]),
        Route(f"{PREFIX}/faults", set_faults, methods=["POST"]),
        Route(f"{PREFIX}/script", script, methods=["POST"]),
        Route(f"{PREFIX}/requests", requests, methods=["GET"]),
        Route(f"{PREFIX}/requests", clear_requests, methods=["DELETE"]),
        Route(f"{PREFIX}/cases/{{case_id}}", case, methods=["GET"]),
        Route(f"{PREFIX}/reset", reset, methods=["POST"]),
        Route(f"{PREFIX}/sessions", expire_sessions, methods=["DELETE"]),
    ]


def _faults_view(sim: Simulator) -> dict[str, Any]:
    return {"faults": sim.faults.settings.model_dump(), "scripts": sim.faults.scripts()}


async def _json_object(request: Request) -> dict[str, Any]:
    body = json.loads(await request.body() or b"{}")
    if not isinstance(body, dict):
        raise ValueError("expected a JSON object")
    return body


def _bad(exc: Exception) -> Response:
    detail = exc.errors(include_url=False) if isinstance(exc, ValidationError) else str(exc)
    return JSONResponse({"error": json.loads(json.dumps(detail, default=str))}, status_code=400)
