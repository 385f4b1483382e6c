"""The simulator's ASGI application: the Thalamus API routes, wrapped in fault injection,
credential checks and the request record; the ``/_sim/`` admin routes come from ``control.py``.

One request goes: read the JSON body, draw the fault (scripted answer for the case, or random),
wait the latency, then either answer with the fault or check credentials and run the endpoint,
and record what was answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from thalamus.simulator.catalogue import Catalogue, load_catalogue, validate_update
from thalamus.simulator.config import SimulatorConfig
from thalamus.simulator.faults import Faults, ScriptedResponse
from thalamus.simulator.record import RecordedRequest, RequestRecord
from thalamus.simulator.sessions import SESSION_COOKIE, Sessions, touchpoint_ok
from thalamus.simulator.state import CaseStore

# Where the server's own ``send`` is kept in the scope, so a dropped connection can reach the
# socket past Starlette's wrappers.
RAW_SEND = "casesync.simulator.raw_send"


@dataclass
class Simulator:
    """Everything one simulator process holds."""

    config: SimulatorConfig
    catalogue: Catalogue
    store: CaseStore
    faults: Faults
    sessions: Sessions
    record: RequestRecord

    @classmethod
    def start(cls, config: SimulatorConfig) -> Simulator:
        catalogue = load_catalogue(config.catalogue)
        return cls(
            config=config,
            catalogue=catalogue,
            store=CaseStore(catalogue),
            faults=Faults(config.faults, config.seed),
            sessions=Sessions(config.session_ttl),
            record=RequestRecord(config.record_size),
        )

    def reset(self) -> None:
        """Back to the start-up state: seeded cases and faults; no scripts, sessions, record."""
        self.store.reset()
        self.faults = Faults(self.config.faults, self.config.seed)
        self.sessions.clear()
        self.record.clear()


@dataclass
class Call:
    """One API request as the endpoints see it."""

    request: Request
    body: Any
    body_error: str | None
    case_id: int | None
    principal: str | None


Endpoint = Callable[[Simulator, Call], Response]


class DropConnection(Response):
    """Closes the connection without any answer, as a crashed server or a cut link would."""

    def __init__(self) -> None:
        super().__init__(status_code=599)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # uvicorn's send is a bound method of its request cycle, which holds the transport.
        cycle = getattr(scope.get(RAW_SEND), "__self__", None)
        transport = getattr(cycle, "transport", None)
        if transport is None:
            # Not uvicorn: promise a body and send none, which the client also sees as broken.
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", b"1")],
                }
            )
            return
        transport.close()
        # Wait for uvicorn to notice the disconnect, else it would log and try to answer 500.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_until_disconnected(receive), timeout=1.0)


async def _until_disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class KeepRawSend:
    """Outermost ASGI layer: remembers the server's ``send`` in the scope for DropConnection."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[RAW_SEND] = send
        await self.app(scope, receive, send)


def build_app(config: SimulatorConfig) -> tuple[ASGIApp, Simulator]:
    """The ASGI application and the simulator state behind it."""
    from thalamus.simulator.control import control_routes

    sim = Simulator.start(config)
    routes = [
        _api_route(sim, "/api/isAlive", "GET", is_alive, session=False),
        _api_route(sim, "/api/v4/isAlive", "GET", is_alive, session=False),
        _api_route(sim, "/api/v4/thalamus_security_check", "POST", login, session=False),
        _api_route(sim, "/api/v3/logout", "GET", logout, session=False),
        _api_route(sim, "/api/v4/cases/typecategory", "GET", type_categories, session=True),
        _api_route(sim, "/api/v4/cases/{case_id}", "GET", get_case, session=True),
        _api_route(sim, "/api/v4/cases/{case_id}", "PUT", put_case, session=True),
        *control_routes(sim),
    ]
    return KeepRawSend(Starlette(routes=routes)), sim


def _api_route(sim: Simulator, path: str, method: str, endpoint: Endpoint, session: bool) -> Route:
    async def handle(request: Request) -> Response:
        arrived = time.time()
        body, body_error = await _read_json(request)
        call = Call(request, body, body_error, _path_case_id(request), principal=None)
        decision = sim.faults.decide(call.case_id, request.method)
        if decision.delay_s:
            await asyncio.sleep(decision.delay_s)
        answer = decision.answer
        if answer.action == "drop":
            response: Response = DropConnection()
        elif answer.action == "respond":
            response = _scripted_response(answer)
        else:
            response = _authorised(sim, call, endpoint, session)
            if answer.action == "apply_then_drop":
                response = DropConnection()
        sim.record.add(_recorded(call, response, arrived))
        return response

    return Route(path, handle, methods=[method], name=f"{method} {path}")


def _authorised(sim: Simulator, call: Call, endpoint: Endpoint, session: bool) -> Response:
    config = sim.config
    request = call.request
    if not touchpoint_ok(config.touchpoint, config.token, request.headers, request.query_params):
        return Response(status_code=401)
    call.principal = sim.sessions.principal(request.cookies.get(SESSION_COOKIE))
    if session and config.require_login and call.principal is None:
        return Response(status_code=401)
    return endpoint(sim, call)


async def _read_json(request: Request) -> tuple[Any, str | None]:
    """The JSON body, or the general error code for a body that is not JSON."""
    raw = await request.body()
    if request.method == "GET":
        return None, None
    content_type = request.headers.get("content-type", "")
    if raw and "json" not in content_type.lower():
        return None, "UnsupportedMediaType"
    try:
        return json.loads(raw), None
    except (ValueError, UnicodeDecodeError):
        return None, "InvalidJson"


def _path_case_id(request: Request) -> int | None:
    raw = request.path_params.get("case_id")
    return int(raw) if isinstance(raw, str) and raw.isdigit() and len(raw) < 19 else None


def _recorded(call: Call, response: Response, arrived: float) -> RecordedRequest:
    dropped = isinstance(response, DropConnection)
    return {
        "method": call.request.method,
        "path": call.request.url.path,
        "body": call.body,
        "status": None if dropped else response.status_code,
        "time": arrived,
        "caseId": call.case_id,
        "dropped": dropped,
    }


def _scripted_response(answer: ScriptedResponse) -> Response:
    if answer.body is None:
        return Response(status_code=answer.status or 200, headers=answer.headers)
    if isinstance(answer.body, str):
        return Response(answer.body, answer.status or 200, answer.headers, "text/plain")
    return JSONResponse(answer.body, answer.status or 200, answer.headers)


def _errors(errors: dict[str, str]) -> JSONResponse:
    return JSONResponse({"errors": errors}, status_code=400)


def context(principal: str | None) -> dict[str, Any]:
    """The ``context`` of a v4 answer: links, activities and the logged-in profile."""
    if principal is None:
        links = [
            {"ref": "login", "href": "/api/v4/thalamus_security_check"},
            {"ref": "register", "href": "/api/v4/register"},
        ]
        return {"links": links, "activities": [], "simpleProfile": None}
    return {
        "links": [{"ref": "logout", "href": "/api/v3/logout"}],
        "activities": [],
        "simpleProfile": {"id": 77, "email": principal},
    }


# --- endpoints -------------------------------------------------------------------------------


def is_alive(sim: Simulator, call: Call) -> Response:
    return JSONResponse({"context": context(call.principal), "isAlive": "1"})


def login(sim: Simulator, call: Call) -> Response:
    if call.body_error or not isinstance(call.body, dict):
        return _errors({"body": call.body_error or "InvalidJson"})
    if call.principal is not None:
        return _errors({"principal": "PartyAlreadyLoggedin"})
    principal, password = call.body.get("principal"), call.body.get("password")
    if principal != sim.config.principal or password != sim.config.password:
        return Response(status_code=401)
    response = JSONResponse({"context": context(principal)})
    response.set_cookie(SESSION_COOKIE, sim.sessions.open(principal), path="/", httponly=True)
    return response


def logout(sim: Simulator, call: Call) -> Response:
    sim.sessions.close(call.request.cookies.get(SESSION_COOKIE))
    response = JSONResponse({"context": context(None)})
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def type_categories(sim: Simulator, call: Call) -> Response:
    query = call.request.query_params
    rows = sim.catalogue.type_categories(
        query.get("visibility"), query.get("caseTypeCode"), query.get("caseCategoryCode")
    )
    return JSONResponse({"caseTypeCategories": rows})


def get_case(sim: Simulator, call: Call) -> Response:
    case = sim.store.get(call.case_id) if call.case_id is not None else None
    if case is None:
        return _errors({"caseInstanceId": "invalidId"})
    return JSONResponse(case.to_json())


def put_case(sim: Simulator, call: Call) -> Response:
    if call.body_error or not isinstance(call.body, dict):
        return _errors({"body": call.body_error or "InvalidJson"})
    exists = call.case_id is not None and call.case_id in sim.store
    errors = validate_update(sim.catalogue, exists, call.body)
    if errors:
        return _errors(errors)
    assert call.case_id is not None
    author = call.principal or sim.config.touchpoint or "anonymous"
    case = sim.store.apply(call.case_id, call.body, author)
    return JSONResponse({"context": context(call.principal), "case": case.to_json()}, 201)
