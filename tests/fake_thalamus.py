"""An in-memory Thalamus for ``httpx.MockTransport``: keeps cases, records requests, fails on cue.

GET ``/api/v4/cases/{id}`` answers the case; PUT applies the update as the API documents it
(every caseData field of the case type required, comments appended) and answers 201
``{"case": {...}}``. :meth:`FakeThalamus.fail` makes the next matching calls answer an error or
raise an httpx exception, optionally after the update took effect (a lost answer).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

import httpx

CASE_PATH = "/api/v4/cases/"


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
    raises: type[httpx.TransportError] | None = None
    after_apply: bool = False


class FakeThalamus:
    """A few cases behind a fake API; ``requests`` is what reached it, in order."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.cases: dict[int, dict[str, Any]] = {}
        self.requests: list[Sent] = []
        self._failures: list[_Failure] = []
        self._next_comment_id = 1

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
        raises: type[httpx.TransportError] | None = None,
        after_apply: bool = False,
    ) -> None:
        """The next ``times`` calls of ``method`` answer ``status`` (or raise ``raises``)."""
        self._failures.append(
            _Failure(method, times, status, body, headers or {}, raises, after_apply)
        )

    def sent(self, method: str) -> list[Sent]:
        return [request for request in self.requests if request.method == method]

    def comments(self, case_id: int) -> list[str]:
        return [comment["description"] for comment in self.cases[case_id]["comments"]]

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.requests.append(
            Sent(request.method, request.url.path, body, dict(request.headers.items()))
        )
        if self.token is not None and request.headers.get("Thalamus-Token") != self.token:
            return httpx.Response(401)
        failure = self._take_failure(request.method)
        if failure is not None:
            return self._failed(request, failure, body)
        return self._answer(request, body)

    def _take_failure(self, method: str) -> _Failure | None:
        for failure in self._failures:
            if failure.method == method and failure.times > 0:
                failure.times -= 1
                return failure
        return None

    def _failed(self, request: httpx.Request, failure: _Failure, body: Any) -> httpx.Response:
        if failure.after_apply:
            self._answer(request, body)
        if failure.raises is not None:
            raise failure.raises("simulated", request=request)
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
