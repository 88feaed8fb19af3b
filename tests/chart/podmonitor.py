"""What the Prometheus Operator makes of a PodMonitor: one Prometheus scrape config per
endpoint, with Kubernetes service discovery of pods and the operator's relabelling.

Follows `generatePodMonitorConfig` and `generateK8SSDConfig` of the Prometheus Operator the
chart tests pin (`pkg/prometheus/promcfg.go` in v0.85.0: job name, the running-pod filter,
the selector's and the port's `keep` rules, the `namespace`/`container`/`pod`/`job`/`endpoint`
labels, then the endpoint's own relabelings, then the sharding rules for one shard), for the
fields the chart's and the operator's PodMonitors use. A PodMonitor using any other field is
refused (`Unsupported`), so this translation never silently differs from the real one.

`api_server`: how Prometheus reaches the API server (the operator's `apiserverConfig`: host,
bearer token file, CA), instead of a pod's in-cluster service account.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_MONITOR_FIELDS = {"selector", "namespaceSelector", "podMetricsEndpoints"}
_SELECTOR_FIELDS = {"matchLabels"}
_ENDPOINT_FIELDS = {"port", "path", "interval", "scrapeTimeout", "relabelings"}
_RELABEL_KEYS = {"sourceLabels": "source_labels", "targetLabel": "target_label",
                 "action": "action", "regex": "regex", "replacement": "replacement",
                 "separator": "separator", "modulus": "modulus"}


class Unsupported(ValueError):
    """The PodMonitor uses a field this translation does not know."""


@dataclass(frozen=True)
class ApiServer:
    """Where and as whom Prometheus asks the API server for pods."""

    host: str
    token_file: str
    ca_file: str


def _sanitize(name: str) -> str:
    # The operator's sanitizeLabelName: every invalid character becomes "_".
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _only(what: str, found: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(found) - allowed)
    if unknown:
        raise Unsupported(f"{what}: {', '.join(unknown)} not translated")


def _relabeling(rule: dict[str, Any]) -> dict[str, Any]:
    _only("relabeling", rule, set(_RELABEL_KEYS))
    converted = {_RELABEL_KEYS[key]: value for key, value in rule.items()}
    if "action" in converted:
        converted["action"] = str(converted["action"]).lower()
    return converted


def _namespaces(monitor: dict[str, Any]) -> list[str]:
    selector = monitor["spec"].get("namespaceSelector") or {}
    _only("namespaceSelector", selector, {"any", "matchNames"})
    if selector.get("any"):
        return []
    # No selector: the PodMonitor's own namespace.
    return list(selector.get("matchNames") or [monitor["metadata"]["namespace"]])


def _selector_rules(selector: dict[str, Any]) -> list[dict[str, Any]]:
    _only("selector", selector, _SELECTOR_FIELDS)
    return [{"action": "keep",
             "source_labels": [f"__meta_kubernetes_pod_label_{_sanitize(key)}",
                               f"__meta_kubernetes_pod_labelpresent_{_sanitize(key)}"],
             "regex": f"({value});true"}
            for key, value in sorted((selector.get("matchLabels") or {}).items())]


def _sd_config(monitor: dict[str, Any], api_server: ApiServer) -> dict[str, Any]:
    config: dict[str, Any] = {"role": "pod"}
    namespaces = _namespaces(monitor)
    if namespaces:
        config["namespaces"] = {"names": namespaces}
    config["api_server"] = api_server.host
    config["authorization"] = {"credentials_file": api_server.token_file}
    config["tls_config"] = {"ca_file": api_server.ca_file}
    return config


def scrape_configs(monitor: dict[str, Any], api_server: ApiServer) -> list[dict[str, Any]]:
    """The scrape configs the Prometheus Operator generates for `monitor`, one per endpoint."""
    if monitor.get("kind") != "PodMonitor":
        raise Unsupported(f"not a PodMonitor: {monitor.get('kind')}")
    spec = monitor["spec"]
    _only("PodMonitor spec", spec, _MONITOR_FIELDS)
    namespace, name = monitor["metadata"]["namespace"], monitor["metadata"]["name"]
    configs = []
    for index, endpoint in enumerate(spec["podMetricsEndpoints"]):
        _only("podMetricsEndpoint", endpoint, _ENDPOINT_FIELDS)
        config: dict[str, Any] = {"job_name": f"podMonitor/{namespace}/{name}/{index}",
                                  "honor_labels": False,
                                  "kubernetes_sd_configs": [_sd_config(monitor, api_server)]}
        for key, field in (("interval", "scrape_interval"), ("scrapeTimeout", "scrape_timeout"),
                           ("path", "metrics_path")):
            if endpoint.get(key):
                config[field] = endpoint[key]
        relabelings: list[dict[str, Any]] = [
            {"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"},
            {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"],
             "regex": "(Failed|Succeeded)"},
            *_selector_rules(spec["selector"]),
        ]
        port = endpoint.get("port")
        if port:
            relabelings.append({"action": "keep", "regex": port,
                                "source_labels": ["__meta_kubernetes_pod_container_port_name"]})
        relabelings += [
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_container_name"],
             "target_label": "container"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"target_label": "job", "replacement": f"{namespace}/{name}"},
        ]
        if port:
            relabelings.append({"target_label": "endpoint", "replacement": port})
        relabelings += [_relabeling(rule) for rule in endpoint.get("relabelings") or []]
        # Sharding by address, one shard (shard "0", as the config reloader substitutes it).
        relabelings += [
            {"source_labels": ["__address__", "__tmp_hash"], "target_label": "__tmp_hash",
             "regex": "(.+);", "replacement": "$1", "action": "replace"},
            {"source_labels": ["__tmp_hash"], "target_label": "__tmp_hash", "modulus": 1,
             "action": "hashmod"},
            {"source_labels": ["__tmp_hash", "__tmp_disable_sharding"], "regex": "0;|.+;.+",
             "action": "keep"},
        ]
        config["relabel_configs"] = relabelings
        configs.append(config)
    return configs
