"""A typed client of the simulator's ``/_sim/`` admin endpoints, for tests, demo and benchmarks."""

from __future__ import annotations

from typing import Any

import httpx


class SimulatorAdmin:
    def __init__(self, base_url: str, http: httpx.Client | None = None) -> None:
        self._http = http or httpx.Client(base_url=base_url, timeout=10.0)

    def set_faults(self, **faults: float) -> dict[str, Any]:
        """Change fault settings (latency_ms, jitter_ms, rate_500..rate_504, rate_429,
        retry_after, drop_rate); the others stay as they are."""
        changed: dict[str, Any] = self._json("POST", "/_sim/faults", faults)
        return changed

    def faults(self) -> dict[str, Any]:
        current: dict[str, Any] = self._json("GET", "/_sim/faults")
        return current

    def script(self, case_id: int, responses: list[dict[str, Any]]) -> None:
        """Queue answers for the next updates (PUT) of one case: each ``{"status", "headers",
        "body"}``, ``{"drop": true}`` or ``{"apply_then_drop": true}``."""
        self._json("POST", "/_sim/script", {"caseId": case_id, "responses": responses})

    def requests(self) -> list[dict[str, Any]]:
        """Every API request so far: method, path, body, caseId, status (None: dropped), time."""
        found: list[dict[str, Any]] = self._json("GET", "/_sim/requests")
        return found

    def clear_requests(self) -> None:
        self._json("DELETE", "/_sim/requests")

    def case(self, case_id: int) -> dict[str, Any]:
        """A case as it stands, all its comments included."""
        case: dict[str, Any] = self._json("GET", f"/_sim/cases/{case_id}")
        return case

    def reset(self) -> None:
        """Back to the catalogue's cases, no faults, no scripts, an empty record."""
        self._json("POST", "/_sim/reset")

    def close(self) -> None:
        self._http.close()

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        response = self._http.request(method, path, json=body)
        response.raise_for_status()
        return response.json()
