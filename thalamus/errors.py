"""The one error family of casesync's dealings with Thalamus.

ThalamusError                  root: anything the client could not turn into a case
├── TransientError             worth retrying later (carries ``retry_after`` seconds, if any)
│   ├── OutcomeUnknown         the request was sent but no answer came: it may have taken effect
│   └── NotSent                held back before sending (rate cap, shared pause, open breaker)
├── PermanentError             the API said no for good (carries ``code`` and the ``errors`` object)
└── SessionExpired             401: log in again, then retry; not the event's fault

The retry policy branches on these classes only, never on status numbers or body codes.
"""

from __future__ import annotations

from typing import Any

#: The update-case codes of the docs, in the spelling casesync reports; the API's capitalisation
#: varies, so codes are matched case-insensitively and reported in this spelling.
DOCUMENTED_CODES = (
    "invalidId",
    "CodeRequired",
    "InvalidCode",
    "InvalidName",
    "invalidCaseField",
    "CategorySystemNode",
)
_CANONICAL = {code.lower(): code for code in DOCUMENTED_CODES}


def canonical_code(code: str) -> str:
    """A documented code in its reported spelling (``INVALIDID`` -> ``invalidId``); others as is."""
    return _CANONICAL.get(code.lower(), code)


class ThalamusError(Exception):
    """Root of every failure of a call to Thalamus."""

    def __init__(self, detail: str, *, http_status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.http_status = http_status


class TransientError(ThalamusError):
    """A failure that may pass: connection errors, time-outs, 408, 429, 500, 502, 503, 504."""

    def __init__(
        self,
        detail: str,
        *,
        http_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail, http_status=http_status)
        self.retry_after = retry_after


class OutcomeUnknown(TransientError):
    """The request left but its answer did not arrive; read the case before trying again."""


class NotSent(TransientError):
    """The call was held back on casesync's side; not the event's fault, so no budget is spent."""


class PermanentError(ThalamusError):
    """A refusal that no retry will change; ``code`` is the API's error code as it sent it."""

    def __init__(
        self,
        detail: str,
        *,
        code: str,
        errors: dict[str, Any] | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(detail, http_status=http_status)
        self.code = code
        self.errors: dict[str, Any] = errors or {}


class SessionExpired(ThalamusError):
    """401: the session is missing, expired or refused."""
