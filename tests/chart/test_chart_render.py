"""The chart lints, renders, and what it renders is valid and least-privileged.

`helm lint --strict`; `values.schema.json` rejects typos and unsafe settings; the rendered
objects of several value sets pass the real API server's strict validation (server-side dry
run: unknown fields are errors; duplicate keys are caught while parsing), including the
ServiceMonitor, PodMonitor and PrometheusRule against the Prometheus Operator's own CRDs; and
the RBAC rules are exactly the README's RBAC table (`rbac_table.py`), in every install mode.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import yaml
from agentpool_tools.crd import CRDS, CrdSource, build_crd
from agentpool_tools.monitoring.dashboards import DASHBOARDS

from agentpool_dev.cluster import Cluster
from agentpool_operator.builders.kinds import CHILD_KINDS
from tests.chart import rbac_table
from tests.chart.rbac_table import CLUSTER, Grant
from tests.plugins.chart import CHART, MONITORING_APIS, Helm, documents

Doc = dict[str, Any]

EVERYTHING_ON: dict[str, Any] = {
    "podMonitor": {"enabled": True, "additionalLabels": {"release": "kube-prometheus-stack"}},
    "serviceMonitor": {"additionalLabels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {"additionalLabels": {"release": "kube-prometheus-stack"},
                       "ruleLabels": {"team": "platform"}},
    "grafanaDashboards": {"annotations": {"grafana_folder": "AgentPool"}},
    "commonLabels": {"cost-center": "agents"},
    "networkPolicy": {"enabled": True, "metricsFrom": [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "monitoring"}}}]},
}
NAMESPACED: dict[str, Any] = {"operator": {"watchNamespaces": ["team-a", "team-b"]},
                              "crds": {"enabled": False}}
ALL_NAMESPACES: dict[str, Any] = {"operator": {"watchAllNamespaces": True}}
FULLNAME = "agentpool-operator"
PEM = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUa2V5\n-----END CERTIFICATE-----\n"
RELEASE_NAMESPACE = "agentpool-system"


def by_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Doc], kind: str, name_suffix: str = "") -> Doc:
    found = [d for d in by_kind(docs, kind) if d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"{kind} *{name_suffix}: {[d['metadata']['name'] for d in found]}"
    return found[0]


# The upstream roles the chart binds (their rules, as the API server has them; the can-i matrix
# in test_rbac_matrix.py would notice if they differed).
UPSTREAM_RULES: dict[str, list[Doc]] = {
    "system:auth-delegator": [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"],
         "verbs": ["create"]},
        {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"],
         "verbs": ["create"]}],
    "extension-apiserver-authentication-reader": [
        {"apiGroups": [""], "resources": ["configmaps"],
         "resourceNames": ["extension-apiserver-authentication"],
         "verbs": ["get", "list", "watch"]}],
}


def rendered_grants(docs: list[Doc]) -> set[Grant]:
    """What the rendered Roles, ClusterRoles and their bindings give each ServiceAccount."""
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d["rules"]
             for d in docs if d["kind"] in ("Role", "ClusterRole")}
    found: set[Grant] = set()
    for binding in docs:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace")
        key = (ref["kind"], namespace if ref["kind"] == "Role" else None, ref["name"])
        rules = roles[key] if key in roles else UPSTREAM_RULES[ref["name"]]
        location = namespace if binding["kind"] == "RoleBinding" else CLUSTER
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount", subject
            found |= {Grant(subject["name"], location, group, resource, name, verb)
                      for rule in rules for group in rule["apiGroups"]
                      for resource in rule["resources"] for verb in rule["verbs"]
                      for name in rule.get("resourceNames") or [None]}
    return found


def table_grants(mode: str, served: tuple[str, ...] = (), metrics_api: bool = True,
                 operator_certs: bool = True, apiservice: bool = True) -> set[Grant]:
    return rbac_table.grants(rbac_table.rows(), fullname=FULLNAME,
                             release_namespace=RELEASE_NAMESPACE, mode=mode, served=served,
                             metrics_api=metrics_api, operator_certs=operator_certs,
                             apiservice=apiservice)


def diff(rendered: set[Grant], table: set[Grant]) -> str:
    return (f"rendered, not in the README table: {sorted(rendered - table, key=str)}\n"
            f"in the README table, not rendered: {sorted(table - rendered, key=str)}")


def test_helm_lint_strict(helm_offline: Helm) -> None:
    result = helm_offline.run("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in result.stdout
    with_values = helm_offline.run("lint", "--strict", str(CHART), "-f",
                                   helm_offline.values_file({**EVERYTHING_ON, **NAMESPACED}))
    assert "0 chart(s) failed" in with_values.stdout


@pytest.mark.parametrize(("values", "error"), [
    ({"operater": {}}, "additional properties 'operater' not allowed"),
    ({"operator": {"watchNamespace": ["a"]}}, "additional properties 'watchNamespace'"),
    ({"operator": {"watchNamespaces": ["Not_A_Namespace"]}}, "watchNamespaces/0"),
    ({"crds": {"keep": "yes"}}, "/crds/keep"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"securityContext": {"runAsNonRoot": False}}, "/securityContext/runAsNonRoot"),
    ({"securityContext": {"allowPrivilegeEscalation": True}},
     "/securityContext/allowPrivilegeEscalation"),
    ({"securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}},
     "/securityContext/capabilities/add"),
    ({"grafanaDashboards": {"labelValue": 1}}, "/grafanaDashboards/labelValue"),
    ({"serviceMonitor": {"interval": "30 seconds"}}, "/serviceMonitor/interval"),
    ({"metricsApi": {"apiService": {"create": True, "caBundel": "x"}}}, "caBundel"),
    # What the README says the schema refuses: a CA bundle that is not PEM ...
    ({"metricsApi": {"tls": {"mode": "existingSecret", "existingSecret": "s",
                             "caBundle": "LS0tLS1CRUdJTi=="}}}, "/metricsApi/tls/caBundle"),
    # ... an existing Secret the chart would silently ignore ...
    ({"metricsApi": {"tls": {"existingSecret": "s", "caBundle": PEM}}},
     "/metricsApi/tls/mode"),
    ({"metricsApi": {"tls": {"mode": "existingSecret"}}}, "/metricsApi/tls"),
    ({"metricsApi": {"tls": {"mode": "selfSigned"}}}, "/metricsApi/tls/mode"),
    # Serving every namespace and a list of them at once is a contradiction.
    ({"operator": {"watchAllNamespaces": True, "watchNamespaces": ["a"]}},
     "/operator/watchNamespaces"),
    # Two operators without leader election would both reconcile.
    ({"operator": {"replicas": 2, "leaderElection": {"enabled": False}}},
     "/operator/leaderElection/enabled"),
    ({"metricsApi": {"podDisruptionBudget": {"enabled": True, "minAvailable": 1,
                                             "maxUnavailable": 1}}},
     "/metricsApi/podDisruptionBudget"),
    # ... a writable root file system, and the plain-HTTP metrics port on a load balancer.
    ({"securityContext": {"readOnlyRootFilesystem": False}},
     "/securityContext/readOnlyRootFilesystem"),
    ({"service": {"type": "LoadBalancer"}}, "/service/type"),
    ({"networkPolicy": {"enabled": True, "metricsFrom": [{"namespaceSelecter": {}}]}},
     "/networkPolicy/metricsFrom/0"),
    ({"networkPolicy": {"enabled": True, "apiServerFrom": [{}]}},
     "/networkPolicy/apiServerFrom/0"),
])
def test_the_values_schema_rejects_typos_and_unsafe_settings(
        helm_offline: Helm, values: dict[str, Any], error: str) -> None:
    result = helm_offline.template(values, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert error in result.stderr, result.stderr


def test_default_render(helm_offline: Helm) -> None:
    docs = helm_offline.render()
    kinds = sorted(d["kind"] for d in docs)
    # Without the Prometheus Operator's APIs no monitor or rule is rendered.
    assert not {"ServiceMonitor", "PodMonitor", "PrometheusRule"} & set(kinds)
    assert kinds.count("ConfigMap") == len(DASHBOARDS)
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm", doc["metadata"]["name"]
        assert labels["app.kubernetes.io/instance"] == "agentpool-operator"
        assert labels["app.kubernetes.io/name"] == "agentpool-operator"
        assert labels["helm.sh/chart"] == "agentpool-operator-0.1.0"
        assert labels["app.kubernetes.io/part-of"] == "agentpool"


def test_operator_deployment_is_hardened_and_highly_available(helm_offline: Helm) -> None:
    deployment = one(helm_offline.render(), "Deployment", "agentpool-operator")
    spec = deployment["spec"]
    # Two replicas, one leader: a new pod stands by until the old leader releases the Lease.
    assert spec["replicas"] == 2
    assert spec["strategy"] == {"type": "RollingUpdate",
                                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    args = spec["template"]["spec"]["containers"][0]["args"]
    assert {"--leader-elect", f"--leader-election-namespace={RELEASE_NAMESPACE}",
            f"--leader-election-name={FULLNAME}", "--leader-election-lease-duration=15",
            "--leader-election-renew-deadline=10",
            "--leader-election-retry-period=2"} <= set(args)
    env = {e["name"]: e for e in spec["template"]["spec"]["containers"][0]["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    single = one(helm_offline.render({"operator": {"replicas": 1,
                                                   "leaderElection": {"enabled": False}}}),
                 "Deployment", "agentpool-operator")
    assert single["spec"]["strategy"] == {"type": "Recreate"}
    assert not [a for a in single["spec"]["template"]["spec"]["containers"][0]["args"]
                if a.startswith("--leader")]
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]
    assert container["image"] == "ghcr.io/agentpool/agentpool-operator:0.1.0"
    pinned = helm_offline.render({"image": {"digest": "sha256:" + "a" * 64}})
    image = one(pinned, "Deployment", "agentpool-operator")["spec"]["template"]["spec"][
        "containers"][0]["image"]
    assert image == "ghcr.io/agentpool/agentpool-operator@sha256:" + "a" * 64


def test_both_components_spread_and_keep_one_replica_through_disruptions(
        helm_offline: Helm) -> None:
    docs = helm_offline.render()
    for name, component in ((FULLNAME, "operator"), (f"{FULLNAME}-metrics-api", "metrics-api")):
        deployment = one(docs, "Deployment", name)
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector["app.kubernetes.io/component"] == component
        pdb = next(d for d in by_kind(docs, "PodDisruptionBudget")
                   if d["metadata"]["name"] == name)
        assert pdb["spec"]["minAvailable"] == 1
        assert pdb["spec"]["selector"]["matchLabels"] == selector
        spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert [(c["topologyKey"], c["whenUnsatisfiable"]) for c in spread] == [
            ("kubernetes.io/hostname", "ScheduleAnyway"),
            ("topology.kubernetes.io/zone", "ScheduleAnyway")]
        assert all(c["labelSelector"]["matchLabels"] == selector for c in spread)
    # One replica: no budget (it would block every drain); an empty list: no spread.
    single = helm_offline.render({"operator": {"replicas": 1, "topologySpreadConstraints": []},
                                  "metricsApi": {"replicas": 1}})
    assert not by_kind(single, "PodDisruptionBudget")
    assert "topologySpreadConstraints" not in one(single, "Deployment", FULLNAME)["spec"][
        "template"]["spec"]
    custom = [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
               "whenUnsatisfiable": "DoNotSchedule"}]
    rendered = one(helm_offline.render({"metricsApi": {"topologySpreadConstraints": custom}}),
                   "Deployment", f"{FULLNAME}-metrics-api")
    assert rendered["spec"]["template"]["spec"]["topologySpreadConstraints"] == custom


@pytest.mark.parametrize("source", CRDS, ids=lambda source: source.kind)
def test_crd_switches(helm_offline: Helm, source: CrdSource) -> None:
    crd = one(helm_offline.render(), "CustomResourceDefinition", source.name)
    assert crd["spec"] == build_crd(source)["spec"]
    assert build_crd(source)["metadata"]["labels"].items() <= crd["metadata"]["labels"].items()
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    unkept = one(helm_offline.render({"crds": {"keep": False}}), "CustomResourceDefinition",
                 source.name)
    assert "annotations" not in unkept["metadata"]
    assert not by_kind(helm_offline.render({"crds": {"enabled": False}}),
                       "CustomResourceDefinition")


@pytest.mark.parametrize(("values", "mode", "served"), [
    ({}, "namespaced", (RELEASE_NAMESPACE,)),
    (NAMESPACED, "namespaced", ("team-a", "team-b")),
    (ALL_NAMESPACES, "all", ()),
], ids=["default", "namespaced", "all-namespaces"])
def test_rbac_is_exactly_the_readme_table(helm_offline: Helm, values: dict[str, Any],
                                          mode: str, served: tuple[str, ...]) -> None:
    docs = helm_offline.render(values)
    rendered, table = rendered_grants(docs), table_grants(mode, served)
    assert rendered == table, diff(rendered, table)
    # Two identities: the operator cannot do what only the metrics API needs, and back.
    sas = {d["metadata"]["name"] for d in by_kind(docs, "ServiceAccount")}
    assert sas == {FULLNAME, f"{FULLNAME}-metrics-api"}


def test_without_the_metrics_api_its_rows_go(helm_offline: Helm) -> None:
    docs = helm_offline.render({"metricsApi": {"enabled": False}})
    rendered = rendered_grants(docs)
    table = table_grants("namespaced", (RELEASE_NAMESPACE,), metrics_api=False)
    assert rendered == table, diff(rendered, table)
    assert not [d for d in docs if "queues" in d["metadata"]["name"]]


def test_a_second_release_publishes_into_the_first_ones_metrics_api(helm_offline: Helm) -> None:
    values = {"metricsApi": {"enabled": False, "shared": {"namespace": "platform",
                                                          "fullname": "hub-agentpool-operator"}}}
    docs = helm_offline.render(values, namespace="team-b")
    args = one(docs, "Deployment", FULLNAME)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--queue-directory=platform/hub-agentpool-operator-metrics-api-queues" in args
    assert f"--queue-directory-key=queues.team-b.{FULLNAME}.json.gz" in args
    assert not [d for d in docs if d["kind"] == "APIService" or "metrics-api" in
                d["metadata"]["name"]]
    rendered = rendered_grants(docs)
    table = rbac_table.grants(rbac_table.rows(), fullname=FULLNAME,
                              release_namespace="team-b", mode="namespaced", served=("team-b",),
                              metrics_api=False, shared=("platform", "hub-agentpool-operator"))
    assert rendered == table, diff(rendered, table)
    assert Grant(FULLNAME, "platform", "", "secrets", "hub-agentpool-operator-metrics-api-queues",
                 "patch") in rendered


def test_the_operator_serves_only_the_namespaces_the_values_name(helm_offline: Helm) -> None:
    def namespace_args(values: dict[str, Any]) -> list[str]:
        args = one(helm_offline.render(values), "Deployment", "agentpool-operator")["spec"][
            "template"]["spec"]["containers"][0]["args"]
        return [a for a in args if a.startswith("--namespace")]

    assert namespace_args({}) == [f"--namespace={RELEASE_NAMESPACE}"]
    assert namespace_args(NAMESPACED) == ["--namespace=team-a", "--namespace=team-b"]
    assert namespace_args(ALL_NAMESPACES) == []


def test_both_processes_name_the_same_queue_directory(helm_offline: Helm) -> None:
    docs = helm_offline.render()
    directory = one(docs, "Secret", "metrics-api-queues")
    assert "data" not in directory  # the operator fills it; Helm's upgrades leave it alone
    wanted = f"--queue-directory={RELEASE_NAMESPACE}/{directory['metadata']['name']}"
    for name in ("agentpool-operator", "agentpool-operator-metrics-api"):
        args = one(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0][
            "args"]
        assert wanted in args, (name, args)


def test_monitoring_objects_follow_the_cluster_apis_and_values(helm_offline: Helm) -> None:
    docs = helm_offline.render(EVERYTHING_ON, api_versions=MONITORING_APIS)
    service_monitor = one(docs, "ServiceMonitor")
    assert service_monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert service_monitor["spec"]["endpoints"][0]["honorLabels"] is True
    pod_monitor = one(docs, "PodMonitor")
    # The pools' pods live in the served namespaces: by default the release namespace.
    assert pod_monitor["spec"]["namespaceSelector"] == {"matchNames": [RELEASE_NAMESPACE]}
    everywhere = one(helm_offline.render({**EVERYTHING_ON, **ALL_NAMESPACES},
                                         api_versions=MONITORING_APIS), "PodMonitor")
    assert everywhere["spec"]["namespaceSelector"] == {"any": True}
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["targetLabel"] == \
        "agentpool"
    rule = one(docs, "PrometheusRule")
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    shipped = yaml.safe_load((CHART / "rules" / "agentpool.rules.yaml").read_text())
    assert [r["alert"] for r in rules] == [r["alert"] for g in shipped["groups"]
                                           for r in g["rules"]]
    for r in rules:
        assert r["labels"]["team"] == "platform"
        assert r["labels"]["severity"] in {"warning", "critical"}
        assert r["annotations"]["runbook_url"] == (
            f"https://github.com/agentpool/agentpool/blob/main/docs/runbooks/{r['alert']}.md")
    mirrored = one(helm_offline.render(
        {"prometheusRule": {"runbookBaseUrl": "https://wiki.example.com/agentpool/"}},
        api_versions=MONITORING_APIS), "PrometheusRule")
    assert {r["annotations"]["runbook_url"] for g in mirrored["spec"]["groups"]
            for r in g["rules"]} == {f"https://wiki.example.com/agentpool/{r['alert']}.md"
                                     for r in rules}
    dashboards = by_kind(docs, "ConfigMap")
    assert len(dashboards) == len(DASHBOARDS)
    for cm in dashboards:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "AgentPool"}
        (name, text) = cm["data"].items().__iter__().__next__()
        assert json.loads(text) == json.loads((CHART / "dashboards" / name).read_text())
    relabelled = helm_offline.render({"grafanaDashboards": {"label": "dash", "labelValue": "x"},
                                      **NAMESPACED}, api_versions=MONITORING_APIS)
    assert all(cm["metadata"]["labels"]["dash"] == "x" for cm in by_kind(relabelled,
                                                                        "ConfigMap"))
    assert not by_kind(relabelled, "PodMonitor")  # off by default
    off = helm_offline.render({"serviceMonitor": {"enabled": False},
                               "prometheusRule": {"enabled": False},
                               "grafanaDashboards": {"enabled": False}},
                              api_versions=MONITORING_APIS)
    assert not {"ServiceMonitor", "PrometheusRule", "ConfigMap"} & {d["kind"] for d in off}


def test_the_operator_keeps_the_certificates_and_nothing_random_is_rendered(
        helm_offline: Helm) -> None:
    first, second = helm_offline.template().stdout, helm_offline.template().stdout
    assert first == second  # GitOps: the same manifests on every render
    docs = documents(first)
    for suffix in ("metrics-api-ca", "metrics-api-serving-cert"):
        secret = one(docs, "Secret", suffix)
        assert secret["type"] == "Opaque"
        assert "data" not in secret  # the operator fills it; re-applying leaves that alone
    api_service = one(docs, "APIService")
    assert "caBundle" not in api_service["spec"]  # the operator sets it
    assert api_service["spec"]["service"]["name"] == f"{FULLNAME}-metrics-api"
    args = one(docs, "Deployment", FULLNAME)["spec"]["template"]["spec"]["containers"][0][
        "args"]
    assert {f"--serving-cert={RELEASE_NAMESPACE}/{FULLNAME}-metrics-api-serving-cert",
            f"--serving-cert-ca-secret={FULLNAME}-metrics-api-ca",
            f"--serving-cert-service={FULLNAME}-metrics-api",
            "--serving-cert-apiservice=v1beta1.external.metrics.k8s.io"} <= set(args)
    mounted = one(docs, "Deployment", "metrics-api")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "tls", "secret": {"secretName": f"{FULLNAME}-metrics-api-serving-cert"}} \
        in mounted
    off = helm_offline.render({"metricsApi": {"enabled": False}})
    assert not [d for d in off if "metrics-api" in d["metadata"]["name"]
                or d["kind"] == "APIService"]
    assert not [a for a in one(off, "Deployment", FULLNAME)["spec"]["template"]["spec"][
        "containers"][0]["args"] if a.startswith("--serving-cert")]


CERT_MANAGER = ("cert-manager.io/v1",)


def test_cert_manager_issues_the_certificate_and_injects_the_ca(helm_offline: Helm) -> None:
    values = {"metricsApi": {"tls": {"mode": "certManager"}}}
    refused = helm_offline.template(values, check=False)
    assert refused.returncode != 0
    assert "needs cert-manager (API cert-manager.io/v1)" in refused.stderr
    docs = helm_offline.render(values, api_versions=CERT_MANAGER)
    name = f"{FULLNAME}-metrics-api"
    serving = next(d for d in by_kind(docs, "Certificate") if d["metadata"]["name"] ==
                   f"{name}-tls")
    assert serving["spec"]["dnsNames"] == [name, f"{name}.{RELEASE_NAMESPACE}",
                                           f"{name}.{RELEASE_NAMESPACE}.svc"]
    assert serving["spec"]["issuerRef"] == {"name": f"{name}-ca", "kind": "Issuer",
                                            "group": "cert-manager.io"}
    ca = next(d for d in by_kind(docs, "Certificate") if d["metadata"]["name"] == f"{name}-ca")
    assert ca["spec"]["isCA"] is True
    issuers = {d["metadata"]["name"]: d["spec"] for d in by_kind(docs, "Issuer")}
    assert issuers == {f"{name}-selfsigned": {"selfSigned": {}},
                       f"{name}-ca": {"ca": {"secretName": f"{name}-ca-tls"}}}
    api_service = one(docs, "APIService")
    assert api_service["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": f"{RELEASE_NAMESPACE}/{name}-tls"}
    assert "caBundle" not in api_service["spec"]
    assert not [d for d in by_kind(docs, "Secret") if "serving-cert" in d["metadata"]["name"]]
    assert not [a for a in one(docs, "Deployment", FULLNAME)["spec"]["template"]["spec"][
        "containers"][0]["args"] if a.startswith("--serving-cert")]
    rendered, table = rendered_grants(docs), table_grants("namespaced", (RELEASE_NAMESPACE,),
                                                          operator_certs=False)
    assert rendered == table, diff(rendered, table)
    # Your own issuer: only the serving certificate, from it.
    ours = {"name": "platform-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    docs = helm_offline.render({"metricsApi": {"tls": {"mode": "certManager",
                                                       "certManager": {"issuerRef": ours}}}},
                               api_versions=CERT_MANAGER)
    assert [d["metadata"]["name"] for d in by_kind(docs, "Certificate")] == [f"{name}-tls"]
    assert one(docs, "Certificate")["spec"]["issuerRef"] == ours
    assert not by_kind(docs, "Issuer")


def test_an_existing_secret_and_its_ca_bundle(helm_offline: Helm) -> None:
    docs = helm_offline.render({"metricsApi": {"tls": {
        "mode": "existingSecret", "existingSecret": "my-tls", "caBundle": PEM}}})
    assert one(docs, "APIService")["spec"]["caBundle"] == base64.b64encode(PEM.encode()).decode()
    mounted = one(docs, "Deployment", "metrics-api")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "tls", "secret": {"secretName": "my-tls"}} in mounted
    rendered, table = rendered_grants(docs), table_grants("namespaced", (RELEASE_NAMESPACE,),
                                                          operator_certs=False)
    assert rendered == table, diff(rendered, table)
    without = rendered_grants(helm_offline.render({"metricsApi": {"apiService": {
        "create": False}}}))
    assert without == table_grants("namespaced", (RELEASE_NAMESPACE,), apiservice=False)


def _variants(namespace: str) -> Iterator[tuple[str, Mapping[str, Any], bool]]:
    yield "defaults", {}, False
    yield "everything on", EVERYTHING_ON, True
    yield "cert-manager", {"metricsApi": {"tls": {"mode": "certManager"}}}, False
    yield "cert-manager, your issuer", {"metricsApi": {"tls": {"mode": "certManager",
        "certManager": {"issuerRef": {"name": "platform", "kind": "ClusterIssuer",
                                      "group": "cert-manager.io"}}}}}, False
    yield "existing secret", {"metricsApi": {"tls": {"mode": "existingSecret",
                                                     "existingSecret": "mine",
                                                     "caBundle": PEM}}}, False
    yield "namespaced", {"operator": {"watchNamespaces": [namespace]}, "crds": {"enabled": False},
                         "podMonitor": {"enabled": True}}, True
    yield "all namespaces", {**ALL_NAMESPACES, "crds": {"enabled": False}}, False
    yield "minimal", {"metricsApi": {"enabled": False}, "grafanaDashboards": {"enabled": False},
                      "rbac": {"create": False},
                      "serviceAccount": {"create": False, "name": "existing"}}, False


@pytest.mark.cluster
def test_rendered_objects_pass_the_api_servers_strict_validation(
        cluster: Cluster, helm: Helm, monitoring_crds: list[str], cert_manager_crds: list[str],
        namespace: str) -> None:
    for name, values, monitoring in _variants(namespace):
        rendered = helm.template(values, namespace=namespace,
                                 api_versions=(MONITORING_APIS if monitoring else ())
                                 + CERT_MANAGER).stdout
        docs = documents(rendered)  # duplicate keys fail here
        result = cluster.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-",
                                 input=rendered, check=False)
        assert result.returncode == 0, f"{name}:\n{result.stderr}"
        assert result.stdout.count("(server dry run)") == len(docs), name
        if monitoring:
            assert {"ServiceMonitor", "PrometheusRule"} <= {d["kind"] for d in docs}


@pytest.mark.cluster
def test_strict_validation_catches_an_unknown_field(
        cluster: Cluster, helm: Helm, monitoring_crds: list[str], namespace: str) -> None:
    """The validation above can fail: a misspelt field in a monitor is rejected."""
    docs = helm.render(EVERYTHING_ON, namespace=namespace, api_versions=MONITORING_APIS)
    monitor = one(docs, "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["honourLabels"] = True
    result = cluster.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-",
                             input=json.dumps(monitor), check=False)
    assert result.returncode != 0
    assert 'unknown field "spec.endpoints[0].honourLabels"' in result.stderr
    with pytest.raises(yaml.YAMLError, match="duplicate keys"):
        documents("kind: A\nmetadata: {name: x}\nmetadata: {name: y}\n")


def test_the_operators_rights_on_children_follow_the_registry_of_child_kinds(
        helm_offline: Helm) -> None:
    """builders/kinds.py is the one list of child kinds: the operator may read, create, apply
    and watch each one where it serves pools, and delete exactly those it prunes or makes
    anew; it may write no other kind of child."""
    grants = rendered_grants(helm_offline.render())
    operator = FULLNAME
    served = {(g.group, g.resource, g.verb) for g in grants
              if g.account == operator and g.location == RELEASE_NAMESPACE and g.name is None}
    needed: dict[tuple[str, str], set[str]] = {}
    for child in CHILD_KINDS:
        verbs = needed.setdefault((child.group, child.plural), set())
        verbs |= {"get", "list", "watch", "create", "patch"}
        if child.optional or child.recreatable:
            verbs.add("delete")
    for (group, plural), verbs in needed.items():
        granted = {verb for g, r, verb in served if (g, r) == (group, plural)}
        assert granted == verbs, (group, plural, sorted(granted), sorted(verbs))
    # Writes on anything else: the pool's and budget's status, Events, pods' deletion cost,
    # and (the default served namespace being the release's) the leader election's Lease;
    # nothing more (an AgentBudget itself is only read).
    others = {(g, r) for g, r, verb in served if verb in ("create", "patch", "delete", "update")
              } - set(needed)
    assert others == {("agentpool.dev", "agentpools/status"),
                      ("agentpool.dev", "agentbudgets/status"), ("", "events"), ("", "pods"),
                      ("coordination.k8s.io", "leases")}


def test_network_policies_admit_only_the_ports_the_pods_serve(helm_offline: Helm) -> None:
    assert not by_kind(helm_offline.render(), "NetworkPolicy")  # opt-in
    monitoring = [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "monitoring"}}}]
    control_plane = [{"ipBlock": {"cidr": "10.0.0.0/24"}}]
    docs = helm_offline.render({"networkPolicy": {
        "enabled": True, "metricsFrom": monitoring, "apiServerFrom": control_plane}})
    policies = {d["metadata"]["name"]: d["spec"] for d in by_kind(docs, "NetworkPolicy")}
    assert set(policies) == {FULLNAME, f"{FULLNAME}-metrics-api"}
    for name, spec in policies.items():
        pod = one(docs, "Deployment", name)["spec"]["template"]
        # It selects exactly this Deployment's pods, and only ingress is restricted.
        assert spec["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        assert spec["podSelector"]["matchLabels"] == one(docs, "Deployment", name)["spec"][
            "selector"]["matchLabels"]
        assert spec["policyTypes"] == ["Ingress"]
        served = {port["name"] for c in pod["spec"]["containers"] for port in c["ports"]}
        admitted = {(port["port"], json.dumps(rule.get("from"), sort_keys=True))
                    for rule in spec["ingress"] for port in rule["ports"]}
        assert {port for port, _ in admitted} == served, name
    assert policies[FULLNAME]["ingress"] == [
        {"ports": [{"port": "http", "protocol": "TCP"}], "from": monitoring}]
    assert policies[f"{FULLNAME}-metrics-api"]["ingress"] == [
        {"ports": [{"port": "https", "protocol": "TCP"}], "from": control_plane},
        {"ports": [{"port": "http-metrics", "protocol": "TCP"}], "from": monitoring}]
    # No peers listed: the ports are open to any source (still only those ports).
    open_ports = helm_offline.render({"networkPolicy": {"enabled": True},
                                      "metricsApi": {"enabled": False}})
    (policy,) = by_kind(open_ports, "NetworkPolicy")
    assert policy["spec"]["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]


def test_namespace_users_manage_pools_through_the_default_roles(helm_offline: Helm) -> None:
    docs = helm_offline.render()
    aggregated = {d["metadata"]["name"]: d for d in by_kind(docs, "ClusterRole")
                  if any(k.startswith("rbac.authorization.k8s.io/aggregate-to-")
                         for k in d["metadata"]["labels"])}
    view, edit = aggregated[f"{FULLNAME}:agentpools-view"], aggregated[
        f"{FULLNAME}:agentpools-edit"]
    assert set(aggregated) == {f"{FULLNAME}:agentpools-view", f"{FULLNAME}:agentpools-edit"}

    def into(role: Doc) -> set[str]:
        return {k.rsplit("-", 1)[1] for k, v in role["metadata"]["labels"].items()
                if k.startswith("rbac.authorization.k8s.io/aggregate-to-") and v == "true"}

    def rights(role: Doc) -> set[tuple[str, str]]:
        return {(resource, verb) for rule in role["rules"] for resource in rule["resources"]
                for verb in rule["verbs"] if rule["apiGroups"] == ["agentpool.dev"]}

    assert into(view) == {"view", "edit", "admin"}
    assert into(edit) == {"edit", "admin"}
    assert {verb for _, verb in rights(view)} == {"get", "list", "watch"}
    # Editors change pools and their scale, never the operator's status.
    assert rights(edit) == {(r, v) for r in ("agentpools",) for v in (
        "create", "update", "patch", "delete", "deletecollection")} | {
        ("agentpools/scale", "update"), ("agentpools/scale", "patch")}
    assert not {r for r in rights(edit) | rights(view) if r[0] == "agentpools/status"
                and r[1] not in ("get", "list", "watch")}
    # They are bound to no one by the chart: the default roles' bindings carry them.
    bound = {d["roleRef"]["name"] for d in docs if d["kind"].endswith("Binding")}
    assert not bound & set(aggregated)
    assert not [d for d in helm_offline.render({"rbac": {"aggregateToDefaultRoles": False}})
                if d["metadata"]["name"] in aggregated]


def test_helm_test_checks_both_services_answer(helm_offline: Helm) -> None:
    docs = helm_offline.render()
    pod = one(docs, "Pod", "-test")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    (container,) = spec["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["image"] == one(docs, "Deployment", FULLNAME)["spec"]["template"][
        "spec"]["containers"][0]["image"]
    # The kubelet's Service variables (no DNS needed) and the Services' ports.
    services = {d["metadata"]["name"]: d for d in by_kind(docs, "Service")}
    targets = container["args"][1:]
    wanted = {f"{name.upper().replace('-', '_')}_SERVICE_HOST:{port['port']}"
              for name, service in services.items() for port in service["spec"]["ports"]
              if port["name"] == "http-metrics"}
    assert set(targets) == wanted
    assert len(wanted) == 2
    without_api = one(helm_offline.render({"metricsApi": {"enabled": False}}), "Pod", "-test")
    assert without_api["spec"]["containers"][0]["args"][1:] == [
        f"{FULLNAME.upper().replace('-', '_')}_SERVICE_HOST:8080"]
    assert not by_kind(helm_offline.render({"tests": {"enabled": False}}), "Pod")
