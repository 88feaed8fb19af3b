"""The prometheus-adapter rules: the query they render is valid PromQL and picks the pool."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from agentpool_dev.services import ServiceSettings
from agentpool_operator.metrics_api.adapter_rules import (
    EXTERNAL_RULES,
    METRICS_QUERY,
    example_query,
    render,
)


def go_render(namespace: str | None, pools: list[str]) -> str:
    """The adapter's text/template output for this one template (its three directives)."""
    query = METRICS_QUERY.replace("<<.Series>>", "agentpool_queue_backlog")
    namespace_block = ('<<with index .LabelValuesByName "namespace">>namespace="<<index . 0>>",'
                       "<<end>>")
    pools_block = ('<<range $i, $v := index .LabelValuesByName "agentpool.dev/pool">>'
                   "<<if $i>>|<<end>><<$v>><<end>>")
    assert namespace_block in query
    assert pools_block in query
    query = query.replace(namespace_block, f'namespace="{namespace}",' if namespace else "")
    return query.replace(pools_block, "|".join(pools))


def test_the_rules_render_as_the_adapter_config_expects() -> None:
    assert yaml.safe_load(render()) == EXTERNAL_RULES
    rule = EXTERNAL_RULES[0]
    assert rule["name"]["as"] == "agentpool_queue_backlog"
    # The HPA's selector label is not a Prometheus label name: never pasted into PromQL.
    assert "<<.LabelMatchers>>" not in rule["metricsQuery"]
    for namespace, pools in (("agents", ["research"]), ("agents", ["a", "b"]), (None, ["x"])):
        assert go_render(namespace, pools) == example_query(namespace, pools)


@pytest.fixture(scope="module")
def promtool() -> str:
    path = ServiceSettings.from_env().promtool
    if not path.exists():
        pytest.fail(f"promtool not found at {path}; run hack/install-services.sh")
    return str(path)


def test_the_rendered_query_takes_one_value_per_pool_of_the_namespace(
    promtool: str, tmp_path: Path,
) -> None:
    rules = {"groups": [{"name": "adapter", "rules": [
        {"record": "adapter:backlog", "expr": example_query("agents", ["research", "echo"])}]}]}
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    series = 'agentpool_queue_backlog{{namespace="{ns}",agentpool="{pool}",instance="{i}"}}'
    test = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                # Two metrics-server replicas export the same value: counted once.
                {"series": series.format(ns="agents", pool="research", i="a"), "values": "12"},
                {"series": series.format(ns="agents", pool="research", i="b"), "values": "12"},
                {"series": series.format(ns="agents", pool="echo", i="a"), "values": "3"},
                {"series": series.format(ns="agents", pool="other", i="a"), "values": "9"},
                {"series": series.format(ns="elsewhere", pool="research", i="a"),
                 "values": "99"},
            ],
            "promql_expr_test": [{
                "expr": "adapter:backlog", "eval_time": "0m",
                "exp_samples": [
                    {"labels": 'adapter:backlog{namespace="agents",agentpool="research"}',
                     "value": 12},
                    {"labels": 'adapter:backlog{namespace="agents",agentpool="echo"}',
                     "value": 3},
                ],
            }],
        }],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(test))
    for argv in ([promtool, "check", "rules", "rules.yaml"],
                 [promtool, "test", "rules", "test.yaml"]):
        result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
