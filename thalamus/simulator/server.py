"""The Thalamus API simulator: a real HTTP server (Starlette on uvicorn) with fault injection.

API routes as documented (thalamus-api.md); admin routes under ``/_sim/`` to inject faults, queue
scripted answers, read the request record and the cases, and reset. State lives in one event
loop, so no locks are needed.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from thalamus.simulator.catalogue import Catalogue, apply_update, load_catalogue, validate_update
from thalamus.simulator.faults import Answer, FaultPlan

SESSION_COOKIE = "JSESSIONID"
CONTEXT: dict[str, Any] = {"links": [], "activities": [], "simpleProfile": None}


@dataclass
class Credentials:
    touchpoint: str = "REST01"
    token: str = "sim-token"
    principal: str = "operator@example.com"
    password: str = "sim-password"
    require_login: bool = False
    session_ttl: float = 1800.0


@dataclass
class SimulatorState:
    catalogue: Catalogue
    credentials: Credentials
    plan: FaultPlan
    record_limit: int = 100_000
    cases: dict[int, dict[str, Any]] = field(default_factory=dict)
    sessions: dict[str, float] = field(default_factory=dict)
    record: deque[dict[str, Any]] = field(default_factory=deque)
    next_comment_id: int = 1

    def reset(self) -> None:
        self.cases = self.catalogue.seeded_cases()
        self.sessions.clear()
        self.record = deque(maxlen=self.record_limit)
        self.plan.faults = type(self.plan.faults)()
        self.plan.scripts.clear()
        self.next_comment_id = 1


def create_app(state: SimulatorState) -> Any:
    """The ASGI application; the outer layer keeps uvicorn's ``send`` so a fault can drop."""
    state.reset()
    api = _Api(state)
    admin = _Admin(state)
    routes = [
        Route("/api/isAlive", api.is_alive, methods=["GET"]),
        Route("/api/v4/isAlive", api.is_alive, methods=["GET"]),
        Route("/api/v4/thalamus_security_check", api.login, methods=["POST"]),
        Route("/api/v3/logout", api.logout, methods=["GET"]),
        Route("/api/v4/cases/typecategory", api.type_categories, methods=["GET"]),
        Route("/api/v4/cases/{case_id}", api.get_case, methods=["GET"]),
        Route("/api/v4/cases/{case_id}", api.update_case, methods=["PUT"]),
        Route("/_sim/faults", admin.faults, methods=["GET", "POST"]),
        Route("/_sim/script", admin.script, methods=["POST"]),
        Route("/_sim/requests", admin.requests, methods=["GET", "DELETE"]),
        Route("/_sim/cases/{case_id}", admin.case, methods=["GET"]),
        Route("/_sim/reset", admin.reset, methods=["POST"]),
    ]
    inner = Starlette(routes=routes)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope["sim.raw_send"] = send
        await inner(scope, receive, send)

    return app


class _Dropped(Response):
    """Closes the connection without an answer, as a crashed proxy or server would."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cycle = getattr(scope.get("sim.raw_send"), "__self__", None)
        transport = getattr(cycle, "transport", None)
        if transport is not None:
            transport.abort()
            return
        # Not served by uvicorn: start an answer and break it off.
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise ConnectionAbortedError("dropped on purpose")


class _Api:
    def __init__(self, state: SimulatorState) -> None:
        self._state = state

    async def is_alive(self, request: Request) -> Response:
        async def answer(_: Any) -> Response:
            return JSONResponse({"context": CONTEXT, "isAlive": "1"})

        return await self._serve(request, None, answer, scriptable=False)

    async def login(self, request: Request) -> Response:
        async def answer(body: Any) -> Response:
            creds = self._state.credentials
            if not isinstance(body, dict) or (
                body.get("principal"),
                body.get("password"),
            ) != (creds.principal, creds.password):
                return Response(status_code=401)
            session = secrets.token_hex(16)
            self._state.sessions[session] = time.monotonic() + creds.session_ttl
            response = JSONResponse({"context": {**CONTEXT, "simpleProfile": {"id": 77}}})
            response.set_cookie(SESSION_COOKIE, session, httponly=True)
            return response

        return await self._serve(request, None, answer, scriptable=False, needs_session=False)

    async def logout(self, request: Request) -> Response:
        self._state.sessions.pop(request.cookies.get(SESSION_COOKIE, ""), None)
        return JSONResponse({"context": CONTEXT})

    async def type_categories(self, request: Request) -> Response:
        async def answer(_: Any) -> Response:
            return JSONResponse({"caseTypeCategories": _type_categories(self._state, request)})

        return await self._serve(request, None, answer, scriptable=False)

    async def get_case(self, request: Request) -> Response:
        case_id = _case_id(request)

        async def answer(_: Any) -> Response:
            case = self._state.cases.get(case_id) if case_id is not None else None
            if case is None:
                return _errors({"caseInstanceId": "invalidId"})
            return JSONResponse(_case_json(case))

        return await self._serve(request, case_id, answer, scriptable=False)

    async def update_case(self, request: Request) -> Response:
        case_id = _case_id(request)

        async def answer(body: Any) -> Response:
            state = self._state
            case = state.cases.get(case_id) if case_id is not None else None
            errors = validate_update(state.catalogue, case, body)
            if errors:
                return _errors(errors)
            assert case is not None
            state.next_comment_id = apply_update(
                state.catalogue,
                case,
                body,
                next_comment_id=state.next_comment_id,
                now_ms=int(time.time() * 1000),
                author=state.credentials.principal,
            )
            return JSONResponse({"context": CONTEXT, "case": _case_json(case)}, status_code=201)

        return await self._serve(request, case_id, answer, scriptable=True)

    async def _serve(
        self,
        request: Request,
        case_id: int | None,
        answer: Any,
        *,
        scriptable: bool,
        needs_session: bool = True,
    ) -> Response:
        """Record the request, apply faults and checks, then produce the real answer."""
        arrived = time.time()
        raw = await request.body()
        body = _json_or_invalid(raw)
        entry = {
            "method": request.method,
            "path": request.url.path,
            "body": body if body is not _INVALID else raw.decode("utf-8", "replace"),
            "caseId": case_id,
            "time": arrived,
            "status": None,
        }
        self._state.record.append(entry)
        delay = self._state.plan.delay()
        if delay:
            await asyncio.sleep(delay)
        response = await self._respond(request, case_id, body, answer, scriptable, needs_session)
        entry["status"] = None if isinstance(response, _Dropped) else response.status_code
        return response

    async def _respond(
        self,
        request: Request,
        case_id: int | None,
        body: Any,
        answer: Any,
        scriptable: bool,
        needs_session: bool,
    ) -> Response:
        refused = self._refused(request, needs_session)
        if refused is not None:
            return refused
        fault = (self._state.plan.scripted(case_id) if scriptable else None) or (
            self._state.plan.random_answer()
        )
        if fault is not None and fault.apply_then_drop:
            await answer({} if body is _INVALID else body)
            return _Dropped()
        if fault is not None and (fault.drop or fault.status is not None):
            return _fault_response(fault)
        if body is _INVALID:
            return _errors({"body": "InvalidJson"})
        response: Response = await answer(body)
        return response

    def _refused(self, request: Request, needs_session: bool) -> Response | None:
        """401 for wrong touchpoint credentials, or a missing or expired session."""
        creds = self._state.credentials
        touchpoint = request.headers.get("Thalamus-Touchpoint") or request.query_params.get(
            "touchpoint"
        )
        token = request.headers.get("Thalamus-Token") or request.query_params.get("token")
        if (touchpoint, token) != (creds.touchpoint, creds.token):
            return Response(status_code=401)
        if needs_session and creds.require_login:
            expires = self._state.sessions.get(request.cookies.get(SESSION_COOKIE, ""))
            if expires is None or expires < time.monotonic():
                return Response(status_code=401)
        return None


class _Admin:
    def __init__(self, state: SimulatorState) -> None:
        self._state = state

    async def faults(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                self._state.plan.faults.update(await request.json())
            except (ValueError, TypeError, AttributeError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(self._state.plan.faults.as_dict())

    async def script(self, request: Request) -> Response:
        try:
            raw = await request.json()
            case_id = int(raw["caseId"])
            answers = [Answer.from_json(item) for item in raw["responses"]]
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return JSONResponse({"error": f"bad script: {exc}"}, status_code=400)
        self._state.plan.scripts.setdefault(case_id, deque()).extend(answers)
        return JSONResponse({"caseId": case_id, "queued": len(self._state.plan.scripts[case_id])})

    async def requests(self, request: Request) -> Response:
        if request.method == "DELETE":
            self._state.record.clear()
            return JSONResponse({"cleared": True})
        return JSONResponse(list(self._state.record))

    async def case(self, request: Request) -> Response:
        case_id = _case_id(request)
        case = self._state.cases.get(case_id) if case_id is not None else None
        if case is None:
            return JSONResponse({"error": "no such case"}, status_code=404)
        return JSONResponse(_case_json(case))

    async def reset(self, request: Request) -> Response:
        self._state.reset()
        return JSONResponse({"reset": True})


_INVALID = object()


def _json_or_invalid(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _INVALID


def _case_id(request: Request) -> int | None:
    text = request.path_params["case_id"]
    return int(text) if text.isdigit() else None


def _case_json(case: dict[str, Any]) -> dict[str, Any]:
    return {**case, "caseData": {"links": [], **case["caseData"]}}


def _errors(errors: dict[str, str]) -> JSONResponse:
    return JSONResponse({"errors": errors}, status_code=400)


def _fault_response(fault: Answer) -> Response:
    if fault.drop:
        return _Dropped()
    assert fault.status is not None
    if fault.body is None:
        return Response(status_code=fault.status, headers=fault.headers)
    if isinstance(fault.body, str):
        return Response(fault.body, status_code=fault.status, headers=fault.headers)
    return JSONResponse(fault.body, status_code=fault.status, headers=fault.headers)


def _type_categories(state: SimulatorState, request: Request) -> list[dict[str, Any]]:
    wanted_type = request.query_params.get("caseTypeCode")
    wanted_category = request.query_params.get("caseCategoryCode")
    found = []
    for case_type in state.catalogue.types.values():
        for code in case_type.categories:
            if wanted_type not in (None, case_type.code) or wanted_category not in (None, code):
                continue
            category = state.catalogue.categories[code]
            found.append(
                {
                    "caseTypeCode": case_type.code,
                    "caseTypeName": case_type.name,
                    "caseCategoryCode": category.code,
                    "caseCategoryName": category.name,
                    "defaultAnswer": None,
                }
            )
    return found


def serve(
    host: str,
    port: int,
    *,
    catalogue: Path | None = None,
    credentials: Credentials | None = None,
    faults: dict[str, Any] | None = None,
    seed: int | None = None,
) -> None:
    """Run the simulator until interrupted."""
    plan = FaultPlan(seed)
    state = SimulatorState(load_catalogue(catalogue), credentials or Credentials(), plan)
    app = create_app(state)
    plan.faults.update(faults or {})
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning")
