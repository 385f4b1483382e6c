"""The Thalamus API v4 client: update and read cases, log in, check health.

Every httpx exception, status code and error body becomes one of :mod:`thalamus.errors` here and
nowhere else. The HTTP client is passed in (its transport too), so tests use
``httpx.MockTransport`` or a real server, never patching.
"""

from __future__ import annotations

import email.utils
import http.cookiejar
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import httpx
from pydantic import SecretStr, ValidationError

from thalamus.errors import (
    OutcomeUnknown,
    PermanentError,
    SessionExpired,
    ThalamusError,
    TransientError,
    canonical_code,
)
from thalamus.models import Case, CaseUpdate

LOGIN_PATH = "/api/v4/thalamus_security_check"
IS_ALIVE_PATH = "/api/v4/isAlive"
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

# httpx failures after which the request may have reached the server and taken effect.
_MAYBE_SENT = (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError)


class SessionCache(Protocol):
    """Where the session cookie lives; the Redis one shares a single login among all workers."""

    def current(self) -> str | None:
        """The ``Cookie`` header of the session in use, if any."""

    def renew(self, stale: str | None, login: Callable[[], str]) -> str:
        """A session newer than ``stale``: call ``login`` unless another caller already did."""


class LocalSessionCache:
    """A session kept in this process: one login at a time, shared by its threads."""

    def __init__(self) -> None:
        self._cookie: str | None = None
        self._lock = threading.Lock()

    def current(self) -> str | None:
        return self._cookie

    def renew(self, stale: str | None, login: Callable[[], str]) -> str:
        with self._lock:
            if self._cookie is None or self._cookie == stale:
                self._cookie = login()
            return self._cookie


class CallHooks(Protocol):
    """Told of every call: pacing (rate cap, shared pause) and the circuit breaker use it."""

    def before_call(self) -> None:
        """Runs before a request leaves; may block, or raise a :class:`ThalamusError`."""

    def after_call(self, status: int | None, retry_after: float | None) -> None:
        """Runs after it: the status, or None when no answer came; ``Retry-After`` in seconds."""


class PerThreadTransport(httpx.BaseTransport):
    """A connection pool of its own for each thread that sends.

    httpcore's pool looks at every connection it holds on each request and each response closed,
    and quadratically while many of them sit idle: one pool shared by dozens of threads spent a
    third of a worker's CPU on that bookkeeping (py-spy, casesync bench at concurrency 64). A
    thread sends one request at a time, so a pool of one connection each serves as well.
    """

    def __init__(self, make: Callable[[], httpx.BaseTransport]) -> None:
        self._make = make
        self._local = threading.local()
        self._made: list[httpx.BaseTransport] = []
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        transport: httpx.BaseTransport | None = getattr(self._local, "transport", None)
        if transport is None:
            transport = self._make()
            self._local.transport = transport
            with self._lock:
                self._made.append(transport)
        return transport.handle_request(request)

    def close(self) -> None:
        with self._lock:
            made, self._made = self._made, []
        for transport in made:
            transport.close()


def build_http_client(
    base_url: str,
    *,
    connect: float = 5.0,
    read: float = 30.0,
    write: float = 30.0,
    pool: float = 5.0,
    max_connections: int = 100,
    per_thread: bool = False,
    transport: httpx.BaseTransport | None = None,
) -> httpx.Client:
    """One pooled HTTP client for a process; every call through it has all four time-outs.

    ``per_thread`` gives each sending thread a pool of one connection (:class:`PerThreadTransport`)
    instead of one pool of ``max_connections`` for all.
    """
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    if per_thread and transport is None:
        one = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        # One TLS context for all: each loads the CA bundle, about a megabyte apiece.
        tls = httpx.create_ssl_context()
        transport = PerThreadTransport(lambda: httpx.HTTPTransport(verify=tls, limits=one))
    # The session lives in the SessionCache only. httpx's own cookie jar would keep the last
    # Set-Cookie and send it on every request without a Cookie header, the login included, so a
    # "fresh" login would carry the refused session (PartyAlreadyLoggedin); it stores nothing.
    no_cookies = http.cookiejar.CookieJar(
        policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[])
    )
    return httpx.Client(
        base_url=base_url,
        timeout=httpx.Timeout(connect=connect, read=read, write=write, pool=pool),
        limits=limits,
        cookies=no_cookies,
        transport=transport,
    )


class ThalamusClient:
    """Calls Thalamus with the touchpoint headers and, where credentials are set, a session."""

    def __init__(
        self,
        http: httpx.Client,
        *,
        touchpoint: str | None = None,
        token: SecretStr | None = None,
        principal: str | None = None,
        password: SecretStr | None = None,
        sessions: SessionCache | None = None,
        hooks: Sequence[CallHooks] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._http = http
        self._headers = {"Accept": "application/json"}
        if touchpoint:
            self._headers["Thalamus-Touchpoint"] = touchpoint
        if token is not None:
            self._headers["Thalamus-Token"] = token.get_secret_value()
        self._principal = principal
        self._password = password
        self._sessions = sessions or LocalSessionCache()
        self._hooks = tuple(hooks)
        self._clock = clock

    @property
    def needs_login(self) -> bool:
        return bool(self._principal and self._password is not None)

    def update_case(self, case_id: int, update: CaseUpdate) -> Case:
        """``PUT /api/v4/cases/{id}``; the updated case on 201."""
        response = self._call("PUT", f"/api/v4/cases/{case_id}", json=update.body())
        return _case_from(response)

    def get_case(self, case_id: int) -> Case:
        """``GET /api/v4/cases/{id}``: the case as it stands."""
        return _case_from(self._call("GET", f"/api/v4/cases/{case_id}"))

    def login(self) -> str:
        """Log in with the operator credentials; the session's ``Cookie`` header."""
        if not self.needs_login:
            raise SessionExpired("the server asked for a login but no principal/password is set")
        assert self._password is not None
        body = {"principal": self._principal, "password": self._password.get_secret_value()}
        response = self._send("POST", LOGIN_PATH, json=body, cookie=None)
        if response.status_code == 401:
            raise SessionExpired(
                "login refused (401): check principal and password", http_status=401
            )
        _raise_for_status(response, self._clock)
        cookie = "; ".join(f"{name}={value}" for name, value in response.cookies.items())
        if not cookie:
            raise SessionExpired("login answered without a session cookie", http_status=200)
        return cookie

    def is_alive(self) -> bool:
        """True when ``isAlive`` answers 200 with ``"1"``; any failure means down."""
        try:
            response = self._send("GET", IS_ALIVE_PATH, cookie=None)
            return response.status_code == 200 and str(response.json().get("isAlive")) == "1"
        except (ThalamusError, ValueError, AttributeError):
            return False

    def _call(self, method: str, path: str, json: Any = None) -> httpx.Response:
        """One API call, renewing the session once (for every worker) after a 401."""
        # Without operator credentials there is no session to look up (the token is a header):
        # asking the cache would cost a shared-cache round trip per call for nothing.
        cookie = self._sessions.current() if self.needs_login else None
        if cookie is None and self.needs_login:
            cookie = self._sessions.renew(None, self.login)
        response = self._send(method, path, json=json, cookie=cookie)
        if response.status_code == 401 and self.needs_login:
            cookie = self._sessions.renew(cookie, self.login)
            response = self._send(method, path, json=json, cookie=cookie)
        if response.status_code == 401:
            raise SessionExpired(_session_detail(self.needs_login), http_status=401)
        _raise_for_status(response, self._clock)
        return response

    def _send(
        self, method: str, path: str, *, json: Any = None, cookie: str | None
    ) -> httpx.Response:
        headers = dict(self._headers)
        if cookie:
            headers["Cookie"] = cookie
        for hook in self._hooks:
            hook.before_call()
        try:
            response = self._http.request(method, path, json=json, headers=headers)
        except _MAYBE_SENT as exc:
            self._after(None, None)
            raise OutcomeUnknown(f"{method} {path}: no answer ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            self._after(None, None)
            raise TransientError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        retry_after = parse_retry_after(response.headers.get("Retry-After"), self._clock())
        self._after(response.status_code, retry_after)
        return response

    def _after(self, status: int | None, retry_after: float | None) -> None:
        for hook in self._hooks:
            hook.after_call(status, retry_after)


def _session_detail(had_credentials: bool) -> str:
    if had_credentials:
        return "401 after a fresh login: the credentials or the touchpoint are refused"
    return "401: the touchpoint code or token is refused"


def _raise_for_status(response: httpx.Response, clock: Callable[[], float]) -> None:
    status = response.status_code
    if status < 400:
        return
    where = f"{response.request.method} {response.request.url.path}"
    if status in TRANSIENT_STATUSES or status >= 500:
        retry_after = parse_retry_after(response.headers.get("Retry-After"), clock())
        raise TransientError(f"{where}: HTTP {status}", http_status=status, retry_after=retry_after)
    errors = error_object(response)
    code = canonical_code(first_code(errors) or f"http{status}")
    detail = f"{where}: HTTP {status} {code}" + (f" {errors}" if errors else "")
    raise PermanentError(detail, code=code, errors=errors, http_status=status)


def error_object(response: httpx.Response) -> dict[str, Any]:
    """The ``errors`` object of an error body; empty for a body that is not JSON (a proxy page)."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    errors = body.get("errors") if isinstance(body, dict) else None
    return errors if isinstance(errors, dict) else {}


def first_code(errors: dict[str, Any]) -> str | None:
    """The first error code of an ``errors`` object whose values are strings or lists of them."""
    for value in errors.values():
        candidates = value if isinstance(value, list) else [value]
        for candidate in candidates:
            if isinstance(candidate, str) and candidate.strip():
                return candidate.strip()
    return None


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds from ``now``: delta-seconds or an HTTP-date; None if absent."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    # isdigit() alone takes "²" (a latin-1 byte from a broken proxy), which float() refuses.
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - now)


def _case_from(response: httpx.Response) -> Case:
    """The case of a 200/201 body: under ``case`` or ``entity`` (maybe in ``data``), or the body."""
    try:
        body = response.json()
        return Case.model_validate(_find_case(body))
    except (json.JSONDecodeError, UnicodeDecodeError, ValidationError, TypeError) as exc:
        # The call succeeded but the answer is unreadable: whether it took effect is unknown.
        raise OutcomeUnknown(
            f"{response.request.method} {response.request.url.path}: "
            f"HTTP {response.status_code} with a body that holds no case"
        ) from exc


def _find_case(body: Any) -> Any:
    if not isinstance(body, dict):
        raise TypeError("not an object")
    for holder in (body, body.get("data")):
        if isinstance(holder, dict):
            for key in ("case", "entity"):
                if isinstance(holder.get(key), dict) and holder[key]:
                    return holder[key]
    return body
