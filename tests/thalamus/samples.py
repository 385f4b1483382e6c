"""Request bodies and headers the tests of the Thalamus client and simulator share."""

from __future__ import annotations

from typing import Any

TOUCHPOINT_HEADERS = {"Thalamus-Touchpoint": "REST01", "Thalamus-Token": "sim-token"}


def valid_update(**changes: Any) -> dict[str, Any]:
    """An update body the default catalogue accepts for cases 1..5000."""
    body: dict[str, Any] = {
        "categoryCode": "Reclamo",
        "typeCode": "Telefonico",
        "status": "In Progress",
        "resolution": "Unresolved",
        "comments": [{"description": "Customer called back"}],
        "caseData": {
            "amount": 150.75,
            "refundApproved": True,
            "attempts": 2,
            "incidentDate": "2025-03-14",
            "notes": "called twice",
        },
    }
    body.update(changes)
    return body
