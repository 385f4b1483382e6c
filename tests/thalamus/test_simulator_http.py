"""The simulator over real HTTP on loopback: the API as documented, credentials, faults, record."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.thalamus.samples import TOUCHPOINT_HEADERS, valid_update
from thalamus.simulator.process import RunningSimulator, running_simulator


def test_an_accepted_update_answers_201_with_the_updated_case(api: httpx.Client) -> None:
    response = api.put("/api/v4/cases/7", json=valid_update())
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"context", "case"}
    case = body["case"]
    assert case["id"] == 7
    assert case["status"] == "In Progress"
    assert case["caseData"]["incidentDate"] == 1741910400000
    assert case["caseData"]["links"] == []
    assert [c["description"] for c in case["comments"]] == ["Customer called back"]
    assert isinstance(case["comments"][0]["creationDate"], int)


def test_get_returns_the_case_object_itself_with_all_comments(api: httpx.Client) -> None:
    api.put("/api/v4/cases/8", json=valid_update(comments=[{"description": "one"}]))
    api.put("/api/v4/cases/8", json=valid_update(comments=[{"description": "two"}]))
    case = api.get("/api/v4/cases/8").json()
    assert case["id"] == 8
    assert [c["description"] for c in case["comments"]] == ["one", "two"]
    assert len({c["id"] for c in case["comments"]}) == 2


@pytest.mark.parametrize(
    ("path", "body", "errors"),
    [
        ("/api/v4/cases/999999", valid_update(), {"caseInstanceId": "invalidId"}),
        ("/api/v4/cases/abc", valid_update(), {"caseInstanceId": "invalidId"}),
        ("/api/v4/cases/1", valid_update(categoryCode=None), {"categoryCode": "CodeRequired"}),
        ("/api/v4/cases/1", valid_update(categoryCode="X"), {"categoryCode": "InvalidCode"}),
        (
            "/api/v4/cases/1",
            valid_update(categoryCode="Servicios"),
            {"categoryCode": "CategorySystemNode"},
        ),
        ("/api/v4/cases/1", valid_update(typeCode=""), {"typeCode": "CodeRequired"}),
        ("/api/v4/cases/1", valid_update(typeCode="X"), {"typeCode": "InvalidCode"}),
        ("/api/v4/cases/1", valid_update(status="Nope"), {"status": "InvalidName"}),
        ("/api/v4/cases/1", valid_update(resolution="Nope"), {"resolution": "InvalidName"}),
        ("/api/v4/cases/1", valid_update(caseData={"amount": 1}), {"caseData": "invalidCaseField"}),
    ],
)
def test_each_documented_error_code_answers_400(
    api: httpx.Client, path: str, body: dict[str, object], errors: dict[str, str]
) -> None:
    response = api.put(path, json=body)
    assert response.status_code == 400
    assert response.json() == {"errors": errors}


def test_all_errors_of_a_request_come_in_one_answer(api: httpx.Client) -> None:
    body = {"categoryCode": "Servicios", "typeCode": "Nope", "status": "Gone", "caseData": {}}
    response = api.put("/api/v4/cases/0", json=body)
    assert response.status_code == 400
    assert response.json()["errors"] == {
        "caseInstanceId": "invalidId",
        "categoryCode": "CategorySystemNode",
        "typeCode": "InvalidCode",
        "status": "InvalidName",
    }


def test_a_refused_update_changes_nothing(simulator: RunningSimulator, api: httpx.Client) -> None:
    api.put("/api/v4/cases/3", json=valid_update(status="Nope"))
    assert simulator.admin.case(3)["updates"] == 0
    assert simulator.admin.case(3)["case"]["status"] == "Open"


def test_a_body_that_is_not_json_is_invalid_json(api: httpx.Client) -> None:
    response = api.put(
        "/api/v4/cases/1", content=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json() == {"errors": {"body": "InvalidJson"}}


def test_getting_an_unknown_case_is_invalid_id(api: httpx.Client) -> None:
    response = api.get("/api/v4/cases/42424")
    assert response.status_code == 400
    assert response.json() == {"errors": {"caseInstanceId": "invalidId"}}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Thalamus-Touchpoint": "REST01"}, {**TOUCHPOINT_HEADERS, "Thalamus-Token": "wrong"}],
)
def test_wrong_touchpoint_credentials_answer_401_with_an_empty_body(
    simulator: RunningSimulator, headers: dict[str, str]
) -> None:
    response = httpx.put(
        f"{simulator.url}/api/v4/cases/1", json=valid_update(), headers=headers, timeout=10
    )
    assert response.status_code == 401
    assert response.content == b""


def test_touchpoint_credentials_may_come_in_the_query(simulator: RunningSimulator) -> None:
    params = {"touchpoint": "REST01", "token": "sim-token"}
    response = httpx.get(f"{simulator.url}/api/v4/cases/1", params=params, timeout=10)
    assert response.status_code == 200


def test_is_alive_answers_on_both_paths(api: httpx.Client) -> None:
    for path in ("/api/isAlive", "/api/v4/isAlive"):
        assert api.get(path).json()["isAlive"] == "1"


def test_type_categories_filter_by_visibility_and_codes(api: httpx.Client) -> None:
    def rows(**params: str) -> list[tuple[str, str]]:
        body = api.get("/api/v4/cases/typecategory", params=params).json()
        return [(r["caseTypeCode"], r["caseCategoryCode"]) for r in body["caseTypeCategories"]]

    assert ("Web", "Reclamo") in rows(visibility="all")
    assert ("Web", "Reclamo") not in rows(visibility="app")
    assert rows(caseTypeCode="Telefonico", caseCategoryCode="Consulta") == [
        ("Telefonico", "Consulta")
    ]


# --- faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_an_error_rate_of_one_answers_that_status(
    simulator: RunningSimulator, api: httpx.Client, status: int
) -> None:
    simulator.admin.set_faults(**{f"error_rate_{status}": 1.0})
    assert api.put("/api/v4/cases/1", json=valid_update()).status_code == status
    assert simulator.admin.case(1)["updates"] == 0


def test_a_429_carries_retry_after(simulator: RunningSimulator, api: httpx.Client) -> None:
    simulator.admin.set_faults(rate_429=1.0, retry_after=9)
    response = api.put("/api/v4/cases/1", json=valid_update())
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "9"


def test_a_dropped_connection_gives_no_answer_and_no_update(
    simulator: RunningSimulator, api: httpx.Client
) -> None:
    simulator.admin.set_faults(drop_rate=1.0)
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        api.put("/api/v4/cases/1", json=valid_update())
    assert simulator.admin.case(1)["updates"] == 0
    assert simulator.admin.requests()[-1]["dropped"] is True


def test_latency_delays_the_answer(simulator: RunningSimulator, api: httpx.Client) -> None:
    simulator.admin.set_faults(latency_ms=200, jitter_ms=50)
    started = time.monotonic()
    api.get("/api/v4/cases/1")
    assert 0.2 <= time.monotonic() - started < 2.0


def test_faults_change_at_run_time_and_reset_clears_them(
    simulator: RunningSimulator, api: httpx.Client
) -> None:
    simulator.admin.set_faults(error_rate_503=1.0)
    assert api.get("/api/v4/cases/1").status_code == 503
    simulator.admin.reset()
    assert api.get("/api/v4/cases/1").status_code == 200
    assert simulator.admin.faults()["error_rate_503"] == 0


def test_bad_fault_settings_are_refused(simulator: RunningSimulator) -> None:
    with pytest.raises(httpx.HTTPStatusError):
        simulator.admin.set_faults(drop_rate=2.0)


def test_scripted_answers_apply_to_the_next_calls_on_that_case(
    simulator: RunningSimulator, api: httpx.Client
) -> None:
    simulator.admin.script(
        5,
        [
            {"status": 503, "headers": {"Retry-After": "2"}, "body": {"why": "busy"}},
            {"drop": True},
            {"apply_then_drop": True},
        ],
    )
    assert api.get("/api/v4/cases/6").status_code == 200  # another case is served normally
    first = api.put("/api/v4/cases/5", json=valid_update())
    assert (first.status_code, first.headers["Retry-After"], first.json()) == (
        503,
        "2",
        {"why": "busy"},
    )
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        api.put("/api/v4/cases/5", json=valid_update())
    assert simulator.admin.case(5)["updates"] == 0
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        api.put("/api/v4/cases/5", json=valid_update())
    assert simulator.admin.case(5)["updates"] == 1  # applied, though no answer came
    assert api.put("/api/v4/cases/5", json=valid_update()).status_code == 201


def test_a_script_can_target_one_method(simulator: RunningSimulator, api: httpx.Client) -> None:
    simulator.admin.script(5, [{"status": 500}], method="PUT")
    assert api.get("/api/v4/cases/5").status_code == 200
    assert api.put("/api/v4/cases/5", json=valid_update()).status_code == 500


def test_a_scripted_delay_can_outlast_a_client_timeout(
    simulator: RunningSimulator, api: httpx.Client
) -> None:
    simulator.admin.script(5, [{"delay_ms": 1000}])
    with pytest.raises(httpx.ReadTimeout):
        api.get("/api/v4/cases/5", timeout=0.2)


# --- record ----------------------------------------------------------------------------------


def test_every_api_request_is_recorded(simulator: RunningSimulator, api: httpx.Client) -> None:
    before = time.time()
    api.put("/api/v4/cases/9", json=valid_update())
    api.get("/api/v4/cases/9")
    api.put("/api/v4/cases/10", json=valid_update(status="Nope"))
    recorded = simulator.admin.requests()
    assert [(r["method"], r["path"], r["status"], r["caseId"]) for r in recorded] == [
        ("PUT", "/api/v4/cases/9", 201, 9),
        ("GET", "/api/v4/cases/9", 200, 9),
        ("PUT", "/api/v4/cases/10", 400, 10),
    ]
    assert recorded[0]["body"] == valid_update()
    assert recorded[1]["body"] is None
    assert all(before <= r["time"] <= time.time() for r in recorded)
    assert len(simulator.admin.requests(case_id=9)) == 2
    simulator.admin.clear_requests()
    assert simulator.admin.requests() == []


def test_the_record_is_bounded() -> None:
    with running_simulator("--record-size", "3") as sim:
        for _ in range(5):
            httpx.get(f"{sim.url}/api/isAlive", headers=TOUCHPOINT_HEADERS, timeout=10)
        assert len(sim.admin.requests()) == 3


def test_reset_restores_the_seeded_cases(simulator: RunningSimulator, api: httpx.Client) -> None:
    api.put("/api/v4/cases/4", json=valid_update())
    simulator.admin.reset()
    assert simulator.admin.case(4)["case"]["status"] == "Open"
    assert simulator.admin.case(4)["case"]["comments"] == []


# --- login -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def login_simulator() -> Iterator[RunningSimulator]:
    with running_simulator("--require-login", "--session-ttl", "1") as sim:
        yield sim


def _login(client: httpx.Client, password: str = "sim-password") -> httpx.Response:
    body = {"principal": "operator@example.com", "password": password}
    return client.post("/api/v4/thalamus_security_check", json=body)


def test_case_calls_need_a_login_when_required(login_simulator: RunningSimulator) -> None:
    with httpx.Client(
        base_url=login_simulator.url, headers=TOUCHPOINT_HEADERS, timeout=10
    ) as client:
        refused = client.get("/api/v4/cases/1")
        assert (refused.status_code, refused.content) == (401, b"")
        assert client.get("/api/v4/isAlive").status_code == 200
        login = _login(client)
        assert login.status_code == 200
        assert "JSESSIONID" in login.cookies
        assert login.json()["context"]["simpleProfile"]["email"] == "operator@example.com"
        assert client.get("/api/v4/cases/1").status_code == 200


def test_a_session_expires_after_its_ttl(login_simulator: RunningSimulator) -> None:
    with httpx.Client(
        base_url=login_simulator.url, headers=TOUCHPOINT_HEADERS, timeout=10
    ) as client:
        _login(client)
        assert client.get("/api/v4/cases/1").status_code == 200
        time.sleep(1.2)
        assert client.get("/api/v4/cases/1").status_code == 401


def test_a_wrong_password_gets_no_session(login_simulator: RunningSimulator) -> None:
    with httpx.Client(
        base_url=login_simulator.url, headers=TOUCHPOINT_HEADERS, timeout=10
    ) as client:
        assert _login(client, password="wrong").status_code == 401
        assert client.get("/api/v4/cases/1").status_code == 401


def test_logging_in_twice_is_party_already_logged_in(login_simulator: RunningSimulator) -> None:
    with httpx.Client(
        base_url=login_simulator.url, headers=TOUCHPOINT_HEADERS, timeout=10
    ) as client:
        _login(client)
        again = _login(client)
        assert again.status_code == 400
        assert again.json() == {"errors": {"principal": "PartyAlreadyLoggedin"}}


def test_logout_ends_the_session(login_simulator: RunningSimulator) -> None:
    with httpx.Client(
        base_url=login_simulator.url, headers=TOUCHPOINT_HEADERS, timeout=10
    ) as client:
        _login(client)
        assert client.get("/api/v3/logout").json()["context"]["simpleProfile"] is None
        assert client.get("/api/v4/cases/1").status_code == 401
