"""A small typed client of the simulator's ``/_sim/`` admin routes, for tests, demo and benchmarks.

Every call has a time-out and raises ``httpx.HTTPStatusError`` when the simulator refuses it
(a bad fault rate, a malformed script), so a mistake in a test fails loudly.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, cast

import httpx

from thalamus.simulator.record import RecordedRequest

#: A scripted answer: ``{"status": 503, "headers": {...}, "body": ...}``, ``{"drop": True}``,
#: ``{"apply_then_drop": True}``, ``{}`` (answer normally), each with an optional ``delay_ms``.
ScriptedAnswer = dict[str, Any]


class SimulatorAdmin:
    """Steers one simulator: faults, scripts, the request record, a case's state, reset."""

    def __init__(
        self, base_url: str, http: httpx.Client | None = None, *, timeout: float = 10.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._owns_http = http is None
        self._http = http or httpx.Client(timeout=timeout)
        self._timeout = timeout

    def is_alive(self) -> bool:
        """True when the process answers its admin health check (faults never apply to it)."""
        try:
            return self._http.get(self._url("/_sim/isAlive"), timeout=self._timeout).is_success
        except httpx.HTTPError:
            return False

    def faults(self) -> dict[str, Any]:
        """The fault settings in force (see ``FaultSettings``)."""
        return cast(dict[str, Any], self._call("GET", "/_sim/faults")["faults"])

    def set_faults(self, **changes: float) -> dict[str, Any]:
        """Change some fault settings (``drop_rate=0.1``, ``latency_ms=5``...); the rest stay."""
        return cast(dict[str, Any], self._call("POST", "/_sim/faults", changes)["faults"])

    def clear_faults(self) -> dict[str, Any]:
        """No latency and no random faults (scripts stay)."""
        zero = {name: 0.0 for name in self.faults() if name != "retry_after"}
        return self.set_faults(**zero)

    def script(
        self, case_id: int, responses: list[ScriptedAnswer], *, method: str | None = None
    ) -> None:
        """The next answers for calls on ``case_id`` (of ``method`` only, if given), in order."""
        body = {"caseId": case_id, "method": method, "responses": responses}
        self._call("POST", "/_sim/script", body)

    def requests(self, case_id: int | None = None) -> list[RecordedRequest]:
        """The recorded API requests, oldest first, of one case if ``case_id`` is given."""
        params = {} if case_id is None else {"caseId": str(case_id)}
        return cast(
            list[RecordedRequest], self._call("GET", "/_sim/requests", params=params)["requests"]
        )

    def clear_requests(self) -> None:
        self._call("DELETE", "/_sim/requests")

    def case(self, case_id: int) -> dict[str, Any]:
        """``{"case": <case object with every comment>, "updates": <PUTs applied>}``."""
        return self._call("GET", f"/_sim/cases/{case_id}")

    def expire_sessions(self) -> None:
        """End every login session now, as if their TTL had passed."""
        self._call("DELETE", "/_sim/sessions")

    def reset(self) -> None:
        """Back to the start-up state: seeded cases and faults; no scripts, sessions, record."""
        self._call("POST", "/_sim/reset")

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> SimulatorAdmin:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        response = self._http.request(
            method, self._url(path), json=body, params=params, timeout=self._timeout
        )
        response.raise_for_status()
        return cast(dict[str, Any], response.json())

    def _url(self, path: str) -> str:
        return self.base_url + path
