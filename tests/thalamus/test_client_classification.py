"""How every answer of Thalamus, and every way of getting none, becomes one of casesync's errors.

Each test talks to ``httpx.MockTransport``: the client sends real requests through httpx and the
handler answers them, so nothing is patched.
"""

from __future__ import annotations

import email.utils
import traceback
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from thalamus.client import LOGIN_PATH, LocalSessionCache, ThalamusClient, build_http_client
from thalamus.errors import (
    DOCUMENTED_CODES,
    OutcomeUnknown,
    PermanentError,
    SessionExpired,
    ThalamusError,
    TransientError,
)
from thalamus.models import CaseUpdate

BASE_URL = "http://thalamus.test"
TOKEN = "tok-9f8e7d6c5b4a"
PASSWORD = "pw-s3cret-0451"
NOW = 1_750_000_000.0
CASE_ID = 1234
CASE = {"id": CASE_ID, "categoryCode": "Reclamo", "typeCode": "Telefonico", "status": "Open"}
UPDATE = CaseUpdate(categoryCode="Reclamo", typeCode="Telefonico", status="In Progress")

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A MockTransport handler that keeps every request and answers from a list, in order."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def paths(self) -> list[str]:
        return [f"{request.method} {request.url.path}" for request in self.requests]


def thalamus(handler: Handler, **options: Any) -> ThalamusClient:
    http = build_http_client(BASE_URL, transport=httpx.MockTransport(handler))
    options.setdefault("touchpoint", "REST01")
    options.setdefault("token", SecretStr(TOKEN))
    options.setdefault("clock", lambda: NOW)
    return ThalamusClient(http, **options)


def with_login(handler: Handler, sessions: LocalSessionCache | None = None) -> ThalamusClient:
    return thalamus(
        handler,
        principal="operator@example.com",
        password=SecretStr(PASSWORD),
        sessions=sessions or LocalSessionCache(),
    )


def stale_session() -> LocalSessionCache:
    sessions = LocalSessionCache()
    sessions.renew(None, lambda: "JSESSIONID=old")
    return sessions


def login_ok(session: str) -> httpx.Response:
    return httpx.Response(
        200,
        headers={"Set-Cookie": f"JSESSIONID={session}; Path=/; HttpOnly"},
        json={"context": {"links": [], "activities": [], "simpleProfile": {"id": 77}}},
    )


def updated() -> httpx.Response:
    return httpx.Response(201, json={"context": {"links": []}, "case": CASE})


def bad_request(errors: dict[str, Any]) -> httpx.Response:
    return httpx.Response(400, json={"context": {"links": []}, "errors": errors})


def failure_of(answer: httpx.Response | Exception, **options: Any) -> ThalamusError:
    client = thalamus(Recorder(answer), **options)
    with pytest.raises(ThalamusError) as caught:
        client.update_case(CASE_ID, UPDATE)
    return caught.value


# --- 400: permanent, under the API's code ----------------------------------------------------


def odd_spellings(code: str) -> list[str]:
    return [code, code.upper(), code.lower(), code.swapcase()]


@pytest.mark.parametrize(
    ("sent", "canonical"),
    [(spelling, code) for code in DOCUMENTED_CODES for spelling in odd_spellings(code)],
)
def test_a_documented_update_code_in_any_capitalisation_is_permanent_under_its_spelling(
    sent: str, canonical: str
) -> None:
    errors = {"field": sent, "other": "InvalidName"}
    error = failure_of(bad_request(errors))
    assert type(error) is PermanentError
    assert error.code == canonical
    assert error.errors == errors
    assert error.http_status == 400


@pytest.mark.parametrize("code", ["PartyAlreadyLoggedin", "statusIsAlreadyClose", "NotEditable"])
def test_any_other_400_code_is_permanent_under_that_code(code: str) -> None:
    error = failure_of(bad_request({"case": code}))
    assert type(error) is PermanentError
    assert error.code == code
    assert error.errors == {"case": code}


@pytest.mark.parametrize(
    "value", ["INVALIDCASEFIELD", ["invalidcasefield"], ["", "InvalidCaseField", "InvalidName"]]
)
def test_an_error_value_may_be_a_string_or_a_list(value: str | list[str]) -> None:
    error = failure_of(bad_request({"caseData": value}))
    assert isinstance(error, PermanentError)
    assert error.code == "invalidCaseField"
    assert error.errors == {"caseData": value}


def test_a_400_proxy_page_is_permanent_as_http400() -> None:
    page = httpx.Response(
        400, headers={"Content-Type": "text/html"}, text="<html><h1>Bad Request</h1></html>"
    )
    error = failure_of(page)
    assert type(error) is PermanentError
    assert error.code == "http400"
    assert error.errors == {}


@pytest.mark.parametrize("body", [b"", b"[]", b'{"errors": "oops"}', b'{"errors": {}}'])
def test_a_400_without_a_readable_errors_object_is_permanent_as_http400(body: bytes) -> None:
    error = failure_of(httpx.Response(400, content=body))
    assert isinstance(error, PermanentError)
    assert error.code == "http400"


@pytest.mark.parametrize("status", [403, 404])
def test_forbidden_and_not_found_are_permanent(status: int) -> None:
    error = failure_of(httpx.Response(status))
    assert type(error) is PermanentError
    assert error.code == f"http{status}"
    assert error.http_status == status


def test_a_404_with_an_errors_object_reports_its_code() -> None:
    error = failure_of(httpx.Response(404, json={"errors": {"caseInstanceId": "INVALIDID"}}))
    assert isinstance(error, PermanentError)
    assert error.code == "invalidId"


# --- transient and unknown outcomes ------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_busy_or_failing_servers_are_transient(status: int) -> None:
    error = failure_of(httpx.Response(status, text="try later"))
    assert type(error) is TransientError
    assert error.http_status == status
    assert error.retry_after is None


def test_retry_after_in_seconds_is_kept() -> None:
    error = failure_of(httpx.Response(429, headers={"Retry-After": "120"}))
    assert isinstance(error, TransientError)
    assert error.retry_after == 120.0


def test_retry_after_as_an_http_date_counts_from_the_clock() -> None:
    moment = email.utils.formatdate(NOW + 90, usegmt=True)
    error = failure_of(httpx.Response(429, headers={"Retry-After": moment}))
    assert isinstance(error, TransientError)
    assert error.retry_after == pytest.approx(90.0)


def test_retry_after_in_the_past_means_now() -> None:
    moment = email.utils.formatdate(NOW - 600, usegmt=True)
    error = failure_of(httpx.Response(503, headers={"Retry-After": moment}))
    assert isinstance(error, TransientError)
    assert error.retry_after == 0.0


@pytest.mark.parametrize("value", ["soon", "1.5", "-3", "\u00b2", ""])
def test_an_unreadable_retry_after_is_ignored(value: str) -> None:
    # A header is bytes on the wire: a broken proxy's byte 0xB2 reads as "\u00b2", a digit.
    error = failure_of(httpx.Response(503, headers={b"Retry-After": value.encode("latin-1")}))
    assert type(error) is TransientError
    assert error.retry_after is None


@pytest.mark.parametrize(
    "failure",
    [httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout],
)
def test_a_request_that_never_left_is_transient_and_known_not_applied(
    failure: type[httpx.TransportError],
) -> None:
    error = failure_of(failure("refused"))
    assert type(error) is TransientError
    assert isinstance(error.__cause__, failure)


@pytest.mark.parametrize(
    "failure",
    [httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError],
)
def test_a_request_sent_without_an_answer_has_an_unknown_outcome(
    failure: type[httpx.TransportError],
) -> None:
    error = failure_of(failure("no answer"))
    assert type(error) is OutcomeUnknown
    assert isinstance(error, TransientError)


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(201, headers={"Content-Type": "text/html"}, text="<html>OK</html>"),
        httpx.Response(201, content=b""),
        httpx.Response(201, json={"context": {"links": []}}),
        httpx.Response(201, json=[CASE]),
    ],
)
def test_a_201_without_a_readable_case_has_an_unknown_outcome(answer: httpx.Response) -> None:
    error = failure_of(answer)
    assert type(error) is OutcomeUnknown
    assert error.http_status is None or error.http_status == 201


def test_a_201_with_the_case_returns_it() -> None:
    case = thalamus(Recorder(updated())).update_case(CASE_ID, UPDATE)
    assert case.id == CASE_ID
    assert case.status == "Open"


# --- sessions ----------------------------------------------------------------------------------


def test_a_401_without_credentials_is_an_expired_session_and_no_login_is_tried() -> None:
    recorder = Recorder(httpx.Response(401))
    client = thalamus(recorder)
    with pytest.raises(SessionExpired):
        client.update_case(CASE_ID, UPDATE)
    assert recorder.paths() == [f"PUT /api/v4/cases/{CASE_ID}"]


def test_a_401_with_credentials_logs_in_once_and_retries_with_the_new_cookie() -> None:
    recorder = Recorder(httpx.Response(401), login_ok("fresh"), updated())
    client = with_login(recorder, stale_session())
    case = client.update_case(CASE_ID, UPDATE)
    assert case.id == CASE_ID
    assert recorder.paths() == [
        f"PUT /api/v4/cases/{CASE_ID}",
        f"POST {LOGIN_PATH}",
        f"PUT /api/v4/cases/{CASE_ID}",
    ]
    first, login, retried = recorder.requests
    assert first.headers["Cookie"] == "JSESSIONID=old"
    assert "Cookie" not in login.headers
    assert retried.headers["Cookie"] == "JSESSIONID=fresh"
    assert retried.content == first.content


def test_a_login_sends_the_principal_and_password() -> None:
    recorder = Recorder(login_ok("fresh"), updated())
    with_login(recorder).update_case(CASE_ID, UPDATE)
    login = recorder.requests[0]
    assert login.url.path == LOGIN_PATH
    assert httpx.Response(200, content=login.content).json() == {
        "principal": "operator@example.com",
        "password": PASSWORD,
    }


def test_a_second_401_after_a_fresh_login_is_an_expired_session() -> None:
    recorder = Recorder(httpx.Response(401), login_ok("fresh"), httpx.Response(401))
    client = with_login(recorder, stale_session())
    with pytest.raises(SessionExpired) as caught:
        client.update_case(CASE_ID, UPDATE)
    assert caught.value.http_status == 401
    assert recorder.paths().count(f"POST {LOGIN_PATH}") == 1


def test_a_refused_login_is_an_expired_session() -> None:
    recorder = Recorder(httpx.Response(401), httpx.Response(401))
    client = with_login(recorder, stale_session())
    with pytest.raises(SessionExpired):
        client.update_case(CASE_ID, UPDATE)


def test_a_login_never_carries_the_session_it_replaces() -> None:
    # The first login's cookie must not ride along on the next login: a server that sees a
    # session there answers PartyAlreadyLoggedin instead of a new session.
    recorder = Recorder(
        login_ok("first"), updated(), httpx.Response(401), login_ok("second"), updated()
    )
    client = with_login(recorder)
    client.update_case(CASE_ID, UPDATE)
    client.update_case(CASE_ID, UPDATE)
    logins = [request for request in recorder.requests if request.url.path == LOGIN_PATH]
    assert len(logins) == 2
    assert all("Cookie" not in login.headers for login in logins)
    assert recorder.requests[-1].headers["Cookie"] == "JSESSIONID=second"


def test_one_session_serves_every_call_of_a_process() -> None:
    recorder = Recorder(login_ok("only"), updated())
    client = with_login(recorder)
    for _ in range(3):
        client.update_case(CASE_ID, UPDATE)
    assert recorder.paths().count(f"POST {LOGIN_PATH}") == 1


# --- headers and health ------------------------------------------------------------------------


def test_the_touchpoint_and_token_go_with_every_call() -> None:
    recorder = Recorder(
        login_ok("s"),
        updated(),
        httpx.Response(200, json={"case": CASE}),
        httpx.Response(200, json={"isAlive": "1"}),
    )
    client = with_login(recorder)
    client.update_case(CASE_ID, UPDATE)
    client.get_case(CASE_ID)
    client.is_alive()
    assert len(recorder.requests) == 4
    for request in recorder.requests:
        assert request.headers["Thalamus-Touchpoint"] == "REST01"
        assert request.headers["Thalamus-Token"] == TOKEN


def test_an_update_is_a_put_of_the_json_body() -> None:
    recorder = Recorder(updated())
    thalamus(recorder).update_case(CASE_ID, UPDATE)
    (request,) = recorder.requests
    assert request.method == "PUT"
    assert request.headers["Content-Type"] == "application/json"
    assert httpx.Response(200, content=request.content).json() == UPDATE.body()


@pytest.mark.parametrize(
    ("answer", "alive"),
    [
        (httpx.Response(200, json={"context": {}, "isAlive": "1"}), True),
        (httpx.Response(200, json={"isAlive": 1}), True),
        (httpx.Response(200, json={"isAlive": "0"}), False),
        (httpx.Response(200, json=["1"]), False),
        (httpx.Response(200, text="<html>maintenance</html>"), False),
        (httpx.Response(503, json={"isAlive": "1"}), False),
        (httpx.ConnectError("refused"), False),
        (httpx.ReadTimeout("slow"), False),
    ],
)
def test_is_alive_is_true_only_for_a_200_saying_1(
    answer: httpx.Response | Exception, alive: bool
) -> None:
    assert thalamus(Recorder(answer)).is_alive() is alive


# --- secrets -----------------------------------------------------------------------------------

LEAKY_ANSWERS: list[httpx.Response | Exception] = [
    httpx.Response(400, json={"errors": {"caseData": "invalidCaseField"}}),
    httpx.Response(400, text="<html>proxy</html>"),
    httpx.Response(401),
    httpx.Response(403),
    httpx.Response(429, headers={"Retry-After": "3"}),
    httpx.Response(503),
    httpx.Response(201, text="not json"),
    httpx.ConnectError("refused"),
    httpx.ReadTimeout("timed out"),
]


@pytest.mark.parametrize("answer", LEAKY_ANSWERS)
@pytest.mark.parametrize("logs_in", [False, True])
def test_a_token_never_appears_in_an_error_message(
    answer: httpx.Response | Exception, logs_in: bool
) -> None:
    recorder = Recorder(login_ok("s"), answer) if logs_in else Recorder(answer)
    client = with_login(recorder) if logs_in else thalamus(recorder)
    with pytest.raises(ThalamusError) as caught:
        client.update_case(CASE_ID, UPDATE)
    shown = "".join(traceback.format_exception(caught.value)) + repr(caught.value)
    assert TOKEN not in shown
    assert PASSWORD not in shown
