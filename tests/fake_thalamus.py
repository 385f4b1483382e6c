"""An in-memory Thalamus for ``httpx.MockTransport``: keeps cases, records requests, fails on cue.

GET ``/api/v4/cases/{id}`` answers the case; PUT applies the update as the API documents it
(every caseData field of the case type required, comments appended) and answers 201
``{"case": {...}}``. :meth:`FakeThalamus.fail` makes the next matching calls answer an error or
raise an exception, optionally after the update took effect (a lost answer). With
:meth:`FakeThalamus.require_login` it also wants a session cookie from a login. It takes calls
from several threads at once, as the batch applier makes them.
"""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass, field
from typing import Any

import httpx

CASE_PATH = "/api/v4/cases/"
LOGIN_PATH = "/api/v4/thalamus_security_check"


@dataclass(frozen=True)
class Sent:
    """A request as the fake Thalamus received it."""

    method: str
    path: str
    body: Any
    headers: dict[str, str]


@dataclass
class _Failure:
    method: str
    times: int
    status: int = 500
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raises: type[Exception] | None = None
    after_apply: bool = False
    case_id: int | None = None


class FakeThalamus:
    """A few cases behind a fake API; ``requests`` is what reached it, in order."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.cases: dict[int, dict[str, Any]] = {}
        self.requests: list[Sent] = []
        self._failures: list[_Failure] = []
        self._next_comment_id = 1
        self._login: tuple[str, str] | None = None
        self._sessions = 0
        self._lock = threading.Lock()

    def add_case(self, case_id: int, **case: Any) -> dict[str, Any]:
        """A case; its ``caseData`` keys are the fields its type requires on update."""
        self.cases[case_id] = {
            "id": case_id,
            "categoryCode": "Reclamo",
            "typeCode": "Telefonico",
            "status": "Unresolved",
            "resolution": None,
            "comments": [],
            "caseData": {},
            **case,
        }
        return self.cases[case_id]

    def fail(
        self,
        method: str,
        *,
        times: int = 1,
        status: int = 500,
        body: Any = None,
        headers: dict[str, str] | None = None,
        raises: type[Exception] | None = None,
        after_apply: bool = False,
        case_id: int | None = None,
    ) -> None:
        """The next ``times`` calls of ``method`` (on ``case_id`` only, if given) answer
        ``status``, or raise ``raises``: an httpx error, or any other as a bug would."""
        self._failures.append(
            _Failure(method, times, status, body, headers or {}, raises, after_apply, case_id)
        )

    def require_login(self, principal: str, password: str) -> None:
        """From now on every call but the login needs the cookie of the latest login."""
        self._login = (principal, password)

    def end_sessions(self) -> None:
        """The server forgets its sessions (they expired): the next call answers 401."""
        self._sessions += 1

    def sent(self, method: str) -> list[Sent]:
        return [request for request in self.requests if request.method == method]

    def comments(self, case_id: int) -> list[str]:
        return [comment["description"] for comment in self.cases[case_id]["comments"]]

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            return self._handle(request)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.requests.append(
            Sent(request.method, request.url.path, body, dict(request.headers.items()))
        )
        if self.token is not None and request.headers.get("Thalamus-Token") != self.token:
            return httpx.Response(401)
        if self._login is not None:
            if request.url.path == LOGIN_PATH:
                return self._log_in(body)
            if request.headers.get("Cookie") != f"JSESSIONID=s{self._sessions}":
                return httpx.Response(401)
        failure = self._take_failure(request)
        if failure is not None:
            return self._failed(request, failure, body)
        return self._answer(request, body)

    def _log_in(self, body: Any) -> httpx.Response:
        if self._login != (body.get("principal"), body.get("password")):
            return httpx.Response(401)
        self._sessions += 1
        return httpx.Response(200, headers={"Set-Cookie": f"JSESSIONID=s{self._sessions}"})

    def _take_failure(self, request: httpx.Request) -> _Failure | None:
        for failure in self._failures:
            if (
                failure.method == request.method
                and failure.times > 0
                and (failure.case_id is None or request.url.path == f"{CASE_PATH}{failure.case_id}")
            ):
                failure.times -= 1
                return failure
        return None

    def _failed(self, request: httpx.Request, failure: _Failure, body: Any) -> httpx.Response:
        if failure.after_apply:
            self._answer(request, body)
        if failure.raises is not None and issubclass(failure.raises, httpx.RequestError):
            raise failure.raises("simulated", request=request)
        if failure.raises is not None:
            raise failure.raises("simulated")
        return httpx.Response(failure.status, json=failure.body, headers=failure.headers)

    def _answer(self, request: httpx.Request, body: Any) -> httpx.Response:
        if not request.url.path.startswith(CASE_PATH):
            return httpx.Response(404)
        case = self.cases.get(int(request.url.path.removeprefix(CASE_PATH)))
        if case is None:
            return _error("caseInstanceId", "invalidId")
        if request.method == "GET":
            return httpx.Response(200, json=case)
        if request.method == "PUT":
            return self._update(case, body)
        return httpx.Response(405)

    def _update(self, case: dict[str, Any], body: dict[str, Any]) -> httpx.Response:
        for code in ("categoryCode", "typeCode"):
            if not body.get(code):
                return _error(code, "CodeRequired")
        case_data = body.get("caseData")
        if case_data is not None and set(case_data) != set(case["caseData"]):
            return _error("caseData", "invalidCaseField")
        for name in ("categoryCode", "typeCode", "status", "resolution"):
            if name in body:
                case[name] = body[name]
        if case_data is not None:
            case["caseData"] = dict(case_data)
        for comment in body.get("comments") or []:
            case["comments"].append(
                {"id": self._next_comment_id, "description": comment["description"]}
            )
            self._next_comment_id += 1
        return httpx.Response(201, json={"case": copy.deepcopy(case)})


def _error(name: str, code: str) -> httpx.Response:
    return httpx.Response(400, json={"errors": {name: code}})
