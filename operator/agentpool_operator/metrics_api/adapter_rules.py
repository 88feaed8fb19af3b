"""prometheus-adapter rules, for clusters whose external metrics API belongs to it already.

Only one server can back `v1beta1.external.metrics.k8s.io`. Where prometheus-adapter holds
it, the chart leaves our APIService out and adds `EXTERNAL_RULES` to the adapter's config
(`rules.external` in the prometheus-community chart); the operator's HPA stays the same.
The series come from this package's `/metrics` (`telemetry.py`): `agentpool_queue_backlog`
with `namespace` and `agentpool` labels, so scrape it with `honorLabels: true`. Print the
rules with `python -m agentpool_operator.metrics_api.adapter_rules`.

The query cannot use the adapter's `<<.LabelMatchers>>`: the HPA selects on the label
`agentpool.dev/pool`, which the adapter would paste into PromQL verbatim, and that is not a
valid Prometheus label name. It reads the selected pools from `<<.LabelValuesByName>>`
instead. `max` collapses the copies that several metrics-server replicas export.
Caveats: the scaling path now includes Prometheus (scrape interval + adapter relist), and
older adapters do not add the namespace for HPAs in the `default` namespace.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from agentpool_operator.api.autoscaling import QUEUE_BACKLOG_METRIC
from agentpool_operator.api.labels import POOL_LABEL

SERIES_POOL_LABEL = "agentpool"

_NAMESPACE = '<<with index .LabelValuesByName "namespace">>namespace="<<index . 0>>",<<end>>'
_POOLS = (f'<<range $i, $v := index .LabelValuesByName "{POOL_LABEL}">>'
          "<<if $i>>|<<end>><<$v>><<end>>")
METRICS_QUERY = (f"max by (namespace, {SERIES_POOL_LABEL}) "
                 f'(<<.Series>>{{{_NAMESPACE}{SERIES_POOL_LABEL}=~"{_POOLS}"}})')
"""The adapter's Go template (delimiters `<<` `>>`)."""

EXTERNAL_RULES: list[dict[str, Any]] = [
    {
        "seriesQuery": f'{QUEUE_BACKLOG_METRIC}{{namespace!="",{SERIES_POOL_LABEL}!=""}}',
        "resources": {"overrides": {"namespace": {"resource": "namespace"}}},
        "name": {"matches": f"^{QUEUE_BACKLOG_METRIC}$", "as": QUEUE_BACKLOG_METRIC},
        "metricsQuery": METRICS_QUERY,
    }
]


def example_query(namespace: str | None, pools: list[str]) -> str:
    """What the adapter renders from `METRICS_QUERY` for an HPA in `namespace` selecting
    `pools` (for documentation and tests)."""
    scope = f'namespace="{namespace}",' if namespace else ""
    return (f"max by (namespace, {SERIES_POOL_LABEL}) "
            f'({QUEUE_BACKLOG_METRIC}{{{scope}{SERIES_POOL_LABEL}=~"{"|".join(pools)}"}})')


def render() -> str:
    """The rules as YAML: the value of prometheus-adapter's `rules.external`."""
    return yaml.safe_dump(EXTERNAL_RULES, sort_keys=False, width=1000)


if __name__ == "__main__":
    sys.stdout.write(render())
