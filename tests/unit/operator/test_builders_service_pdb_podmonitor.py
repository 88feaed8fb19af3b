"""The Service, the PodDisruptionBudget and the PodMonitor."""

from __future__ import annotations

from agentpool_operator.builders import build_pdb, build_pod_monitor, build_service, selector_labels
from tests.unit.operator.builder_samples import full_ctx, minimal_ctx


def test_service_is_headless_on_the_metrics_port() -> None:
    service = build_service(minimal_ctx({"monitoring": {"metricsPort": 9200}}))
    assert (service["apiVersion"], service["kind"]) == ("v1", "Service")
    assert service["spec"] == {
        "clusterIP": "None",
        "selector": selector_labels("echo"),
        "ports": [{"name": "metrics", "port": 9200, "targetPort": "metrics", "protocol": "TCP"}],
        "publishNotReadyAddresses": False,
    }


def test_pdb_evicts_one_pod_at_a_time_and_never_blocks_on_unhealthy_pods() -> None:
    pdb = build_pdb(minimal_ctx())
    assert (pdb["apiVersion"], pdb["kind"]) == ("policy/v1", "PodDisruptionBudget")
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": selector_labels("echo")},
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
    }


POOL_RELABELING = {
    "sourceLabels": ["__meta_kubernetes_pod_label_agentpool_dev_pool"],
    "targetLabel": "agentpool",
    "action": "replace",
}


def test_pod_monitor_scrapes_the_metrics_port() -> None:
    monitor = build_pod_monitor(full_ctx({"monitoring": {"pgbouncerExporter": {"enabled": False}}}))
    assert monitor is not None
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    assert monitor["spec"] == {
        "selector": {"matchLabels": selector_labels("research")},
        # The dashboards and alerts group by (namespace, agentpool), as with the chart's.
        "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s",
                                 "relabelings": [POOL_RELABELING]}],
    }


def test_pod_monitor_needs_the_request_metrics_and_the_api() -> None:
    assert build_pod_monitor(full_ctx(pod_monitor_api=False)) is None
    assert build_pod_monitor(full_ctx({"monitoring": {"podMonitor": False}})) is None
    assert build_pod_monitor(full_ctx({"monitoring": {"metrics": False}})) is None
    assert build_pod_monitor(minimal_ctx()) is None
