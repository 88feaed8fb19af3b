"""The monitoring code and what it generates into the chart, without a cluster.

The committed dashboards, rules file and CRD template equal what the code generates; the
dashboards follow the conventions Grafana needs (templated data source, units, descriptions,
`$__rate_interval`); every query parses and reads only metrics the code registers; every alert
has its runbook and a promtool unit test on both sides of its threshold, and promtool checks
and tests the rules file.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from agentpool_tools.crd import build_crd
from agentpool_tools.monitoring import gen
from agentpool_tools.monitoring.alerts import (
    ALERTS,
    RUNBOOK_BASE_URL,
    RUNBOOKS_DIR,
    runbook_markdown,
)
from agentpool_tools.monitoring.catalogue import PGBOUNCER_EXPORTER_COLUMNS
from agentpool_tools.monitoring.dashboards import DASHBOARDS
from agentpool_tools.monitoring.promql import OPERATOR, POOL, RATE

from agent_runtime.supervisor.pod_metrics import RuntimeMetrics
from agentpool_dev.services import ServiceSettings
from agentpool_operator.instrumentation import OperatorMetrics
from agentpool_operator.metrics_api.telemetry import Telemetry
from tests.chart.promql import exported_names, metric_names, shipped_expressions
from tests.plugins.chart import CHART

PROMTOOL_TESTS = Path(__file__).resolve().parents[1] / "data" / "promtool"
RULES = CHART / gen.RULES_FILE
REPO = Path(__file__).resolve().parents[2]
RUNBOOKS = REPO / RUNBOOKS_DIR


def test_committed_chart_files_are_what_the_code_generates() -> None:
    stale = {**gen.stale(CHART), **gen.stale_runbooks(RUNBOOKS)}
    assert not stale, ("run `python -m agentpool_tools.monitoring`:\n"
                       + "\n".join(stale.values()))


def test_the_check_mode_fails_on_a_hand_edit(tmp_path: Path) -> None:
    gen.write(tmp_path)
    assert gen.main(["--chart", str(tmp_path), "--check"]) == 0
    dashboard = tmp_path / gen.DASHBOARDS_DIR / DASHBOARDS[0].filename
    dashboard.write_text(dashboard.read_text().replace("Throughput", "Thruput"))
    (tmp_path / gen.DASHBOARDS_DIR / "stray.json").write_text("{}")
    assert set(gen.stale(tmp_path)) == {dashboard.relative_to(tmp_path),
                                        Path(gen.DASHBOARDS_DIR) / "stray.json"}
    assert gen.main(["--chart", str(tmp_path), "--check"]) == 1


def test_the_crd_template_carries_the_generated_schema() -> None:
    text = (CHART / gen.CRD_TEMPLATE).read_text()
    body = "\n".join(line for line in text.splitlines() if "{{" not in line)
    rendered = yaml.safe_load(body)
    crd = build_crd()
    assert rendered["spec"] == crd["spec"]
    assert rendered["metadata"]["name"] == crd["metadata"]["name"]


def _dashboards() -> list[dict[str, Any]]:
    return [json.loads((CHART / gen.DASHBOARDS_DIR / d.filename).read_text())
            for d in DASHBOARDS]


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def test_dashboards_cover_the_issue() -> None:
    titles = {d["uid"]: {p["title"] for p in _panels(d)} for d in _dashboards()}
    assert {"Throughput", "Error rate", "Task latency p95 / p99", "Queue backlog",
            "Oldest task age", "Workers idle / busy", "Worker restarts by reason",
            "Memory per worker"} <= titles["agentpool-overview"]
    assert {"Pool utilisation", "Pods at capacity", "Clients waiting for a server connection",
            "Longest client wait", "Server connections and pool size",
            "PgBouncer pool saturation"} <= titles["agentpool-database"]
    assert {"Latency p95 by API", "Error ratio by API"} <= titles["agentpool-external-apis"]
    assert {"Hit ratio"} <= titles["agentpool-cache"]
    assert {"Reconciles by result", "Reconcile error ratio",
            "Reconcile duration"} <= titles["agentpool-operator"]


def test_dashboards_follow_grafana_conventions() -> None:
    dashboards = _dashboards()
    assert len({d["uid"] for d in dashboards}) == len(dashboards)
    for dashboard in dashboards:
        where = dashboard["uid"]
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource", where
        assert variables["datasource"]["query"] == "prometheus", where
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(set(ids)) == len(ids), where
        for panel in _panels(dashboard):
            name = f"{where} / {panel['title']}"
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, name
            assert panel.get("description"), name
            assert panel["fieldConfig"]["defaults"].get("unit"), name
            assert panel["targets"], name
            for target in panel["targets"]:
                expr = target["expr"]
                assert target["datasource"]["uid"] == "${datasource}", name
                # Rates over the dashboard's own interval, never a hard-coded window.
                assert not re.search(r"\[\d+[smh]\]", expr), (name, expr)
                if where == "agentpool-operator":
                    # The operator's series by its namespace and job; its per-pool series
                    # (which name the pool's namespace) and the metrics API's (another job)
                    # by the one of the two that applies.
                    assert OPERATOR in expr or '$job"' in expr or '$namespace"' in expr, \
                        f"{name} does not follow the operator variables: {expr}"
                else:
                    assert POOL in expr, f"{name} does not follow the pool variables: {expr}"
                if "rate(" in expr or "increase(" in expr:
                    assert RATE in expr, (name, expr)


def test_the_operator_dashboard_filters_by_namespace_and_job() -> None:
    (operator,) = [d for d in _dashboards() if d["uid"] == "agentpool-operator"]
    variables = {v["name"]: v for v in operator["templating"]["list"]}
    assert variables["namespace"]["query"] == "label_values(agentpool_operator_leader, namespace)"
    assert variables["job"]["query"] == \
        'label_values(agentpool_operator_leader{namespace=~"$namespace"}, job)'
    assert all(variables[v]["multi"] and variables[v]["includeAll"] for v in ("namespace", "job"))
    titles = {p["title"] for p in _panels(operator)}
    assert {"Operator replicas and leader", "Metrics API requests by code",
            "Degraded pools by reason", "Autoscalers able to scale"} <= titles


def _registered_names() -> set[str]:
    # The PgBouncer exporter is not our code: its names are the catalogue taken from its
    # source (monitoring/metrics.py), which the live test checks against PgBouncer.
    return (set(PGBOUNCER_EXPORTER_COLUMNS)
            | exported_names(RuntimeMetrics(["default"]).registry)
            | exported_names(OperatorMetrics(lambda: {("ns", "pool"): {"Ready": "True"}})
                             .registry)
            | exported_names(Telemetry().registry))


def test_every_query_parses_and_reads_only_metrics_the_code_registers() -> None:
    registered = _registered_names()
    seen: set[str] = set()
    for expression in shipped_expressions():
        names = metric_names(expression.expr)
        assert names, f"{expression.where}: no metric in {expression.expr}"
        unknown = names - registered
        assert not unknown, f"{expression.where}: {sorted(unknown)} are not exported"
        seen |= names
    # The catalogue is used, not just declared.
    assert len(seen) >= 20


def test_metric_name_extraction_sees_through_functions_and_operators() -> None:
    expr = ('histogram_quantile(0.9, sum by (le) (rate(a_bucket{x="1"}[5m]))) / on (x) '
            '(max_over_time(b[10m:1m]) or c) > bool scalar(d)')
    assert metric_names(expr) == {"a_bucket", "b", "c", "d"}


def test_every_alert_has_severity_and_runbook_annotations() -> None:
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    assert [r["alert"] for r in rules] == [a.name for a in ALERTS]
    for rule, alert in zip(rules, ALERTS, strict=True):
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, rule["alert"]
        # The Prometheus-community convention: a link to a runbook page, shipped in the repo.
        assert annotations["runbook_url"] == f"{RUNBOOK_BASE_URL}/{rule['alert']}.md"
        page = RUNBOOKS / f"{rule['alert']}.md"
        assert page.exists(), page
        assert page.read_text() == runbook_markdown(alert)
        assert len(alert.runbook) > 150, f"{rule['alert']}: runbook too thin"
        assert "{{ $labels." in annotations["description"] or "{{ $value" in \
            annotations["description"] or rule["alert"].endswith("Absent"), rule["alert"]
    assert {a.name for a in ALERTS} >= {
        "AgentPoolQueueBacklogHigh", "AgentPoolOldestTaskTooOld", "AgentPoolTaskErrorRateHigh",
        "AgentPoolWorkersRestartingOften", "AgentPoolWorkerMemoryLeakSuspected",
        "AgentPoolNotReady", "AgentPoolOperatorReconcileErrors",
        "AgentPoolDatabasePoolSaturated"}
    # The product itself: critical where it stops serving or work is lost.
    severities = {r["alert"]: r["labels"]["severity"] for r in rules}
    assert {name: severities[name] for name in (
        "AgentPoolOperatorDown", "AgentPoolOperatorAbsent", "AgentPoolMetricsApiDown",
        "AgentPoolMetricsApiAbsent", "AgentPoolTasksDeadLettered", "AgentPoolMetricsApiErrors",
        "AgentPoolAutoscalerFailing", "AgentPoolDegraded")} == {
        "AgentPoolOperatorDown": "critical", "AgentPoolOperatorAbsent": "critical",
        "AgentPoolMetricsApiDown": "critical", "AgentPoolMetricsApiAbsent": "critical",
        "AgentPoolTasksDeadLettered": "critical", "AgentPoolMetricsApiErrors": "warning",
        "AgentPoolAutoscalerFailing": "warning", "AgentPoolDegraded": "warning"}
    backlog = next(r for r in rules if r["alert"] == "AgentPoolQueueBacklogHigh")
    assert backlog["for"] == "5m"
    assert backlog["expr"].rstrip().endswith("> 100")


def _promtool_cases() -> dict[str, list[dict[str, Any]]]:
    cases: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(PROMTOOL_TESTS.glob("*.yaml")):
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                cases.setdefault(case["alertname"], []).append(case)
    return cases


def test_every_alert_has_a_promtool_test_that_fires_and_one_that_does_not() -> None:
    cases = _promtool_cases()
    for alert in ALERTS:
        found = cases.get(alert.name, [])
        assert any(c["exp_alerts"] for c in found), f"{alert.name}: no firing case"
        # A quiet case: an evaluation with no alert, or one where only some series fire.
        assert any(not c["exp_alerts"] for c in found) or _partial(alert.name), \
            f"{alert.name}: no case showing it stays quiet"


def _partial(name: str) -> bool:
    """The test input holds series that must not fire next to the ones that do."""
    for path in PROMTOOL_TESTS.glob("*.yaml"):
        for test in yaml.safe_load(path.read_text())["tests"]:
            names = {c["alertname"] for c in test.get("alert_rule_test", [])}
            if name in names:
                groups = {tuple(sorted((k, v) for k, v in _labels(s["series"]).items()
                                       if k in {"agentpool", "namespace", "pod"}))
                          for s in test["input_series"]}
                fired = {tuple(sorted((k, v) for k, v in a["exp_labels"].items()
                                      if k in {"agentpool", "namespace", "pod"}))
                         for c in test["alert_rule_test"] if c["alertname"] == name
                         for a in c["exp_alerts"]}
                if groups - fired:
                    return True
    return False


def _labels(series: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)="([^"]*)"', series))


@pytest.fixture(scope="module")
def promtool() -> str:
    path = ServiceSettings.from_env().promtool
    if not path.exists():
        pytest.fail(f"promtool not found at {path}; run hack/install-services.sh")
    return str(path)


def test_promtool_checks_the_rules_file(promtool: str) -> None:
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    files = sorted(str(p) for p in PROMTOOL_TESTS.glob("*.yaml"))
    assert files
    result = subprocess.run([promtool, "test", "rules", *files], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_catch_a_changed_threshold(promtool: str, tmp_path: Path) -> None:
    """The rule tests can fail: the same tests against rules with a raised threshold."""
    mutated = RULES.read_text().replace("  > 100\n", "  > 200\n")
    assert mutated != RULES.read_text()
    rules_dir = tmp_path / "charts" / "agentpool-operator" / "rules"
    rules_dir.mkdir(parents=True)
    (rules_dir / RULES.name).write_text(mutated)
    tests_dir = tmp_path / "tests" / "data" / "promtool"
    tests_dir.mkdir(parents=True)
    for path in PROMTOOL_TESTS.glob("*.yaml"):
        (tests_dir / path.name).write_text(path.read_text())
    result = subprocess.run([promtool, "test", "rules", *map(str, tests_dir.glob("*.yaml"))],
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "AgentPoolQueueBacklogHigh" in result.stdout + result.stderr
