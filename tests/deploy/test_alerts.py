"""The alert rules and the Grafana dashboard as files: promtool checks and unit-tests every rule,
the Kubernetes base carries the same rules, every alert has a runbook, every dashboard query
parses and the dashboard shows every signal an alert reads."""

import re
import subprocess
from typing import Any

import pytest
import yaml

from deploy.alerts import PROMETHEUS_RULE, render
from tests.helpers import PROJECT_DIR, rendered
from tests.promql import (
    DASHBOARD,
    RULES,
    RULES_TESTS,
    dashboard_exprs,
    dashboard_panels,
    dashboard_variable_metrics,
    ensure_promtool,
    metric_names,
    promtool_errors,
    rule_exprs,
)

RUNBOOKS = PROJECT_DIR / "docs" / "operations" / "alerts.md"


@pytest.fixture(scope="module", autouse=True)
def promtool() -> None:
    ensure_promtool()


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_promtool_checks_the_rules_and_passes_their_unit_tests() -> None:
    for command in (["check", "rules", str(RULES)], ["test", "rules", str(RULES_TESTS)]):
        out = subprocess.run(["promtool", *command], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_unit_test_where_it_fires() -> None:
    cases = [
        case
        for test in yaml.safe_load(RULES_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    fired = {case["alertname"] for case in cases if case.get("exp_alerts")}
    assert fired == {r["alert"] for r in rules()}


def test_the_base_prometheus_rule_is_generated_from_the_rules_file() -> None:
    assert PROMETHEUS_RULE.read_text() == render(), (
        "regenerate: python -m deploy.alerts > deploy/k8s/base/prometheus-rule.yaml"
    )
    kustomization = yaml.safe_load((PROMETHEUS_RULE.parent / "kustomization.yaml").read_text())
    assert PROMETHEUS_RULE.name in kustomization["resources"]


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_each_overlay_scrapes_the_entries_and_carries_the_rules(overlay: str) -> None:
    docs = rendered(overlay)
    [rule] = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    [monitor] = [d for d in docs if d["kind"] == "PodMonitor"]
    [entry] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "attrition-entry"]  # fmt: skip
    pod = entry["spec"]["template"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
    assert endpoint["honorLabels"] is True  # BentoML's `endpoint` label, not the Operator's
    model = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "attrition-model"]  # fmt: skip
    labels = model[0]["spec"]["template"]["metadata"]["labels"]
    assert not monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()


def anchor(heading: str) -> str:
    """The anchor GitHub (and most Markdown sites) give a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_has_a_runbook_section() -> None:
    text = RUNBOOKS.read_text()
    anchors = {anchor(h) for h in re.findall(r"^#{2,4} (.+)$", text, flags=re.M)}
    for rule in rules():
        url = rule["annotations"]["runbook_url"]
        path, fragment = url.split("#")
        assert path == str(RUNBOOKS.relative_to(PROJECT_DIR)), url
        assert fragment == rule["alert"].lower() and fragment in anchors, url
        assert rule["labels"]["severity"] in {"critical", "warning"}


def test_every_dashboard_query_parses_and_a_broken_one_would_not() -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 15
    assert promtool_errors(exprs) == ""
    assert "parse error" in promtool_errors({"broken": "sum(rate(x[5m])"})


def test_the_dashboard_shows_every_signal_an_alert_reads() -> None:
    shown = set().union(*map(metric_names, dashboard_exprs().values()))
    read = set().union(*map(metric_names, rule_exprs().values()))
    assert read <= shown, read - shown
    assert dashboard_variable_metrics() <= read | shown


def test_every_dashboard_panel_queries_the_chosen_data_source() -> None:
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            if "job" in target["expr"]:  # the dashboard's job variable, never a fixed job
                assert 'job=~"$job"' in target["expr"], panel["title"]


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (le) (rate(a_bucket{x="y z", le!="1e3"}[5m]))', {"a_bucket"}),
        ("a / on (job) group_left (instance) b offset 1h > bool 1e3", {"a", "b"}),
        ("histogram_quantile(0.99, sum(rate(a[1m])) by (le)) and c # d", {"a", "c"}),
        ('max without (pod) (x:y{job=~"$job"}) unless count(z) > 4 * 3600', {"x:y", "z"}),
    ],
)
def test_metric_names_are_the_selectors_of_an_expression(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_the_dashboard_is_valid_grafana_json_for_import() -> None:
    import json

    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "attrition-service" and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
