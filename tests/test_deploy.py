"""The Grafana dashboard and the Prometheus rules in deploy/ name only metrics casesync exports,
and are valid: parsed here always, and checked by ``promtool`` too where it is installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from core import metrics
from core.apply import POISON_EVENT
from core.events import CODE_REQUIRED, INVALID_EVENT
from core.retry_policy import RETRIES_EXHAUSTED
from thalamus.errors import DOCUMENTED_CODES

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "alerts.yml"
RULE_TESTS = PROMETHEUS / "alerts_test.yml"
SCRAPE_CONFIG = PROMETHEUS / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "casesync.json"

METRIC = re.compile(r"casesync_[a-z_]+")
#: The series a metric of each type exports (``_created`` is not: multiprocess mode drops it).
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}
#: Labels Prometheus adds to every series it scrapes.
TARGET_LABELS = frozenset({"job", "instance"})
#: Reasons casesync writes on dead letters: its own, and the API's codes.
OWN_REASONS = frozenset({RETRIES_EXHAUSTED, POISON_EVENT, INVALID_EVENT, CODE_REQUIRED})
REASONS = OWN_REASONS | frozenset(DOCUMENTED_CODES)
NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
#: Prometheus's duration: units from the largest down, each at most once (``1h30m``), or ``0``.
DURATION = re.compile(r"0|(?=\d)(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?")
RULE_KEYS = frozenset({"alert", "expr", "for", "keep_firing_for", "labels", "annotations"})
GROUP_KEYS = frozenset({"name", "interval", "rules", "limit"})


def exported_metrics() -> dict[str, MetricWrapperBase]:
    """Every series name casesync's workers export, and the metric object it comes from."""
    found: dict[str, MetricWrapperBase] = {}
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase):
            for family in metric.describe():
                found.update({family.name + end: metric for end in SUFFIXES[family.type]})
    return found


EXPORTED = exported_metrics()


def label_names(series: str) -> frozenset[str]:
    own = frozenset(EXPORTED[series]._labelnames)
    return own | TARGET_LABELS | ({"le"} if series.endswith("_bucket") else set())


def yaml_of(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def panels_of(holder: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    for panel in holder.get("panels", []):
        yield panel
        yield from panels_of(panel)


def variables() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = dashboard()["templating"]["list"]
    return found


def dashboard_queries() -> list[str]:
    """The PromQL of every panel, and the queries of the variables (``label_values(...)``)."""
    queries = [target["expr"] for panel in panels_of(dashboard()) for target in panel["targets"]]
    for variable in variables():
        query = variable.get("query")
        if variable["type"] == "query":
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml_of(RULES)["groups"] for rule in group["rules"]]


def rule_test_series() -> list[str]:
    return [s["series"] for test in yaml_of(RULE_TESTS)["tests"] for s in test["input_series"]]


SOURCES = {
    "dashboard": dashboard_queries,
    "alert rules": lambda: [rule["expr"] for rule in alert_rules()],
    "alert rule tests": rule_test_series,
}


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_metric_named_is_one_casesync_exports(source: str) -> None:
    queries = SOURCES[source]()
    named = {name for query in queries for name in METRIC.findall(query)}
    assert named, f"the {source} name no casesync metric"
    unknown = sorted(named - set(EXPORTED))
    assert not unknown, f"the {source} name {unknown}; casesync exports {sorted(EXPORTED)}"


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_label_matched_is_one_the_metric_has(source: str) -> None:
    for query in SOURCES[source]():
        for series, matchers in re.findall(r"(casesync_[a-z_]+)\s*\{([^}]*)\}", query):
            if series not in EXPORTED:
                continue  # reported by the test above
            for label, value in re.findall(r'(\w+)\s*(?:=~|!~|!=|=)\s*"([^"]*)"', matchers):
                assert label in label_names(series), f"{series} has no label {label}: {query}"
                if label == "reason" and not value.startswith("$"):
                    assert set(value.split("|")) <= REASONS, f"unknown reason in {query}"


@pytest.mark.parametrize("source", ["dashboard", "alert rules"])
def test_every_label_grouped_by_is_one_the_metrics_have(source: str) -> None:
    known = TARGET_LABELS | {"le"} | {name for m in EXPORTED.values() for name in m._labelnames}
    for query in SOURCES[source]():
        for grouping in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", query):
            labels = {label.strip() for label in grouping.split(",") if label.strip()}
            assert labels <= known, f"no casesync metric has {sorted(labels - known)}: {query}"


def test_the_dashboard_shows_every_metric_casesync_exports() -> None:
    shown = " ".join(dashboard_queries())
    for series, metric in EXPORTED.items():
        family_shown = any(name in shown for name, of in EXPORTED.items() if of is metric)
        assert family_shown, f"no panel shows {series}"


def test_the_dashboard_has_unique_panel_ids_and_a_query_in_each_panel() -> None:
    panels = [panel for panel in panels_of(dashboard()) if panel["type"] != "row"]
    ids = [panel["id"] for panel in panels_of(dashboard())]
    assert panels
    assert len(ids) == len(set(ids)), f"panel ids repeat: {sorted(ids)}"
    assert all(isinstance(panel_id, int) for panel_id in ids)
    for panel in panels:
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert all(target["expr"].strip() for target in panel["targets"]), panel["title"]


def test_the_dashboard_picks_its_prometheus_from_a_variable() -> None:
    sources = [v for v in variables() if v["type"] == "datasource" and v["query"] == "prometheus"]
    assert len(sources) == 1, "the dashboard needs one datasource variable of type prometheus"
    uid = "${" + sources[0]["name"] + "}"
    board = dashboard()
    assert board["uid"]
    assert board["title"]
    for panel in panels_of(board):
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert all(target["datasource"]["uid"] == uid for target in panel["targets"])


def assert_balanced(expr: str) -> None:
    """A cheap stand-in for a PromQL parser: brackets pair up, outside quoted strings."""
    closing = {")": "(", "}": "{", "]": "["}
    open_brackets: list[str] = []
    for char in re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr):
        if char in "({[":
            open_brackets.append(char)
        elif char in closing:
            assert open_brackets, f"unopened {char} in {expr}"
            assert open_brackets.pop() == closing[char], f"{char} in {expr}"
    assert not open_brackets, f"unclosed {open_brackets} in {expr}"


def check_rule(rule: dict[str, Any]) -> None:
    where = rule.get("alert", rule)
    assert set(rule) <= RULE_KEYS, f"{where}: unknown keys {sorted(set(rule) - RULE_KEYS)}"
    assert isinstance(rule.get("alert"), str), f"{where}: every rule here is an alert"
    assert NAME.fullmatch(rule["alert"]), f"{where}: not a valid alert name"
    assert isinstance(rule.get("expr"), str), f"{where}: no expr"
    assert rule["expr"].strip(), f"{where}: empty expr"
    for key in ("for", "keep_firing_for"):
        if key in rule:
            assert DURATION.fullmatch(str(rule[key])), f"{where}: {key} {rule[key]!r}"
    for key in ("labels", "annotations"):
        assert isinstance(rule.get(key), dict), f"{where}: no {key}"
        assert all(NAME.fullmatch(name) for name in rule[key]), f"{where}: a {key} name"
        assert all(isinstance(value, str) for value in rule[key].values()), f"{where}: {key}"
    assert rule["labels"].get("severity") in ("critical", "warning"), f"{where}: severity"
    assert {"summary", "description"} <= set(rule["annotations"]), f"{where}: annotations"
    assert_balanced(rule["expr"])


def check_rule_groups(document: Any) -> None:
    """The rule-group schema Prometheus loads (groups[].name, groups[].rules[])."""
    assert isinstance(document, dict)
    assert set(document) == {"groups"}
    groups = document["groups"]
    assert isinstance(groups, list)
    assert groups
    names = [group.get("name") for group in groups]
    assert all(isinstance(name, str) and name for name in names), "a group without a name"
    assert len(names) == len(set(names)), "group names repeat"
    for group in groups:
        assert set(group) <= GROUP_KEYS, f"{group['name']}: {sorted(set(group) - GROUP_KEYS)}"
        assert DURATION.fullmatch(str(group.get("interval", "1m")))
        assert isinstance(group.get("rules"), list)
        assert group["rules"], f"{group['name']}: no rules"
        alerts = [rule.get("alert") for rule in group["rules"]]
        assert len(alerts) == len(set(alerts)), f"{group['name']}: alert names repeat"
        for rule in group["rules"]:
            check_rule(rule)


def promtool(*args: str, cwd: Path = PROMETHEUS) -> None:
    """Run ``promtool`` where it is installed; nothing where it is not (the parsed checks stand)."""
    found = shutil.which("promtool")
    if found is None:
        return
    done = subprocess.run([found, *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"


def test_the_rules_file_is_a_valid_set_of_prometheus_alerts() -> None:
    check_rule_groups(yaml_of(RULES))
    promtool("check", "rules", str(RULES))
    # Each alert fires on the story it is for (alerts_test.yml), e.g. a reason's first dead letter.
    promtool("test", "rules", RULE_TESTS.name)


def test_the_alerts_readme_recommends_are_set() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    advice = readme.split("**Alerts worth setting.**", 1)[1].split("\n\n", 1)[0]
    rules = " ".join(rule["expr"] for rule in alert_rules())
    recommended = set(METRIC.findall(advice)) | {
        word for word in re.findall(r"[A-Za-z]+", advice) if word in REASONS
    }
    assert recommended >= OWN_REASONS
    assert {name for name in recommended if not re.search(rf"\b{name}\b", rules)} == set()
    assert re.search(r'\bup\{job="casesync"\}', rules), "no alert on a worker's /metrics down"


def test_the_scrape_config_loads_the_rules_and_names_the_job_they_watch() -> None:
    config = yaml_of(SCRAPE_CONFIG)
    assert [PROMETHEUS / name for name in config["rule_files"]] == [RULES]
    jobs = [job["job_name"] for job in config["scrape_configs"]]
    watched = set(re.findall(r'job="([^"]+)"', " ".join(r["expr"] for r in alert_rules())))
    assert watched <= set(jobs), f"the rules watch {watched}, Prometheus scrapes {jobs}"
    promtool("check", "config", str(SCRAPE_CONFIG))


def as_promql(query: str) -> str:
    """A panel's query with Grafana's variables replaced by values Prometheus takes."""
    query = re.sub(r"\$__(rate_interval|interval|range)\b", "5m", query)
    return re.sub(r"\$\{?\w+\}?", ".*", query)


def test_the_dashboard_queries_are_promql(tmp_path: Path) -> None:
    exprs = [target["expr"] for panel in panels_of(dashboard()) for target in panel["targets"]]
    for expr in exprs:
        assert "$" not in as_promql(expr)
        assert_balanced(expr)
    # promtool parses expressions only in rule files: each query becomes a recording rule.
    rules = [{"record": f"dashboard:query_{i}", "expr": as_promql(e)} for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard_rules.yml"
    groups = {"groups": [{"name": "dashboard", "rules": rules}]}
    path.write_text(yaml.safe_dump(groups), encoding="utf-8")
    promtool("check", "rules", str(path), cwd=tmp_path)
