"""The Thalamus client against the simulator process: each answer becomes the right error class."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from tests.thalamus.samples import valid_update
from thalamus.client import ThalamusClient, build_http_client
from thalamus.errors import OutcomeUnknown, PermanentError, SessionExpired, TransientError
from thalamus.models import CaseUpdate
from thalamus.simulator.process import RunningSimulator, running_simulator


def _client(sim: RunningSimulator, **credentials: Any) -> Iterator[ThalamusClient]:
    http = build_http_client(sim.url, connect=5, read=5, write=5, pool=5)
    with http:
        yield ThalamusClient(http, touchpoint="REST01", token=SecretStr("sim-token"), **credentials)


@pytest.fixture
def client(simulator: RunningSimulator) -> Iterator[ThalamusClient]:
    yield from _client(simulator)


def _update(**changes: Any) -> CaseUpdate:
    return CaseUpdate.model_validate(valid_update(**changes))


def test_an_update_returns_the_updated_case(client: ThalamusClient) -> None:
    case = client.update_case(12, _update(status="Resolved", resolution="Resolved"))
    assert (case.id, case.status, case.resolution) == (12, "Resolved", "Resolved")
    assert case.comments[-1].description == "Customer called back"
    assert client.get_case(12).status == "Resolved"


def test_is_alive_is_true_while_the_simulator_answers(
    simulator: RunningSimulator, client: ThalamusClient
) -> None:
    assert client.is_alive()
    simulator.admin.set_faults(error_rate_503=1.0)
    assert not client.is_alive()


@pytest.mark.parametrize(
    ("case_id", "changes", "code", "field"),
    [
        (999_999, {}, "invalidId", "caseInstanceId"),
        (1, {"categoryCode": "Nope"}, "InvalidCode", "categoryCode"),
        (1, {"categoryCode": "Servicios"}, "CategorySystemNode", "categoryCode"),
        (1, {"typeCode": "Nope"}, "InvalidCode", "typeCode"),
        (1, {"status": "Nope"}, "InvalidName", "status"),
        (1, {"resolution": "Nope"}, "InvalidName", "resolution"),
        (1, {"caseData": {"amount": 1.0}}, "invalidCaseField", "caseData"),
    ],
)
def test_each_documented_code_becomes_a_permanent_error(
    client: ThalamusClient, case_id: int, changes: dict[str, Any], code: str, field: str
) -> None:
    with pytest.raises(PermanentError) as caught:
        client.update_case(case_id, _update(**changes))
    assert caught.value.code == code
    assert caught.value.errors == {field: code}
    assert caught.value.http_status == 400


def test_code_required_becomes_a_permanent_error(client: ThalamusClient) -> None:
    # CaseUpdate refuses a blank code before any call; model_copy skips that check so the API's
    # own answer to it is exercised.
    update = _update().model_copy(update={"categoryCode": ""})
    with pytest.raises(PermanentError) as caught:
        client.update_case(1, update)
    assert caught.value.code == "CodeRequired"
    assert caught.value.errors == {"categoryCode": "CodeRequired"}


def test_case_data_read_back_can_be_sent_again_unchanged(client: ThalamusClient) -> None:
    # The API returns dates as epoch ms numbers; casesync completes a partial caseData with what
    # it read, so the simulator takes them back as numbers as well as digit strings.
    current = client.get_case(4).caseData
    assert isinstance(current["incidentDate"], int)
    assert client.update_case(4, _update(caseData=current)).caseData == current
    resent = {**current, "incidentDate": str(current["incidentDate"])}
    assert client.update_case(4, _update(caseData=resent)).caseData == current


def test_a_permanent_error_carries_every_error_of_the_request(client: ThalamusClient) -> None:
    with pytest.raises(PermanentError) as caught:
        client.update_case(0, _update(categoryCode="Servicios", status="Nope"))
    assert caught.value.errors == {
        "caseInstanceId": "invalidId",
        "categoryCode": "CategorySystemNode",
        "status": "InvalidName",
    }


def test_getting_an_unknown_case_is_a_permanent_invalid_id(client: ThalamusClient) -> None:
    with pytest.raises(PermanentError) as caught:
        client.get_case(123_456)
    assert caught.value.code == "invalidId"


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_transient(
    simulator: RunningSimulator, client: ThalamusClient, status: int
) -> None:
    simulator.admin.set_faults(**{f"error_rate_{status}": 1.0})
    with pytest.raises(TransientError) as caught:
        client.update_case(1, _update())
    assert type(caught.value) is TransientError
    assert caught.value.http_status == status


def test_a_429_is_transient_with_its_retry_after(
    simulator: RunningSimulator, client: ThalamusClient
) -> None:
    simulator.admin.set_faults(rate_429=1.0, retry_after=4)
    with pytest.raises(TransientError) as caught:
        client.update_case(1, _update())
    assert (caught.value.http_status, caught.value.retry_after) == (429, 4.0)


def test_a_dropped_connection_after_sending_is_outcome_unknown(
    simulator: RunningSimulator, client: ThalamusClient
) -> None:
    simulator.admin.set_faults(drop_rate=1.0)
    with pytest.raises(OutcomeUnknown):
        client.update_case(1, _update())


def test_an_update_applied_before_the_drop_shows_on_the_next_read(
    simulator: RunningSimulator, client: ThalamusClient
) -> None:
    simulator.admin.script(3, [{"apply_then_drop": True}], method="PUT")
    with pytest.raises(OutcomeUnknown):
        client.update_case(3, _update(status="Closed"))
    assert client.get_case(3).status == "Closed"


def test_a_slow_answer_past_the_read_timeout_is_outcome_unknown(
    simulator: RunningSimulator,
) -> None:
    simulator.admin.script(1, [{"delay_ms": 1500}])
    with build_http_client(simulator.url, read=0.3) as http:
        client = ThalamusClient(http, touchpoint="REST01", token=SecretStr("sim-token"))
        with pytest.raises(OutcomeUnknown):
            client.update_case(1, _update())


def test_a_wrong_token_is_session_expired(simulator: RunningSimulator) -> None:
    with build_http_client(simulator.url) as http:
        client = ThalamusClient(http, touchpoint="REST01", token=SecretStr("wrong"))
        with pytest.raises(SessionExpired):
            client.get_case(1)


def test_the_client_survives_a_script_of_faults_then_succeeds(
    simulator: RunningSimulator, client: ThalamusClient
) -> None:
    simulator.admin.script(2, [{"status": 503}, {"drop": True}])
    for expected in (TransientError, OutcomeUnknown):
        with pytest.raises(expected):
            client.update_case(2, _update())
    assert client.update_case(2, _update()).status == "In Progress"


# --- login -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def login_simulator() -> Iterator[RunningSimulator]:
    with running_simulator("--require-login", "--session-ttl", "1") as sim:
        yield sim


@pytest.fixture
def login_client(login_simulator: RunningSimulator) -> Iterator[ThalamusClient]:
    login_simulator.admin.reset()
    yield from _client(
        login_simulator, principal="operator@example.com", password=SecretStr("sim-password")
    )


def test_the_client_logs_in_before_its_first_call(
    login_simulator: RunningSimulator, login_client: ThalamusClient
) -> None:
    assert login_client.get_case(1).id == 1
    paths = [(r["path"], r["status"]) for r in login_simulator.admin.requests()]
    assert paths == [("/api/v4/thalamus_security_check", 200), ("/api/v4/cases/1", 200)]


def test_an_expired_session_is_renewed_and_the_call_retried(
    login_simulator: RunningSimulator, login_client: ThalamusClient
) -> None:
    login_client.get_case(1)
    time.sleep(1.2)
    assert login_client.update_case(1, _update()).status == "In Progress"
    statuses = [(r["path"], r["status"]) for r in login_simulator.admin.requests()][2:]
    assert statuses == [
        ("/api/v4/cases/1", 401),
        ("/api/v4/thalamus_security_check", 200),
        ("/api/v4/cases/1", 201),
    ]
    assert login_simulator.admin.case(1)["updates"] == 1


def test_a_session_ended_by_the_server_is_renewed(
    login_simulator: RunningSimulator, login_client: ThalamusClient
) -> None:
    login_client.get_case(1)
    login_simulator.admin.expire_sessions()
    assert login_client.get_case(1).id == 1


def test_wrong_login_credentials_are_session_expired(login_simulator: RunningSimulator) -> None:
    login_simulator.admin.reset()
    with build_http_client(login_simulator.url) as http:
        client = ThalamusClient(
            http,
            touchpoint="REST01",
            token=SecretStr("sim-token"),
            principal="operator@example.com",
            password=SecretStr("wrong"),
        )
        with pytest.raises(SessionExpired):
            client.get_case(1)


def test_a_client_without_credentials_gets_session_expired(
    login_simulator: RunningSimulator,
) -> None:
    login_simulator.admin.reset()
    with build_http_client(login_simulator.url) as http:
        client = ThalamusClient(http, touchpoint="REST01", token=SecretStr("sim-token"))
        with pytest.raises(SessionExpired):
            client.get_case(1)
