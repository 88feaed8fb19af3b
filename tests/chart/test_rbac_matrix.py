"""Least privilege that holds under `kubectl auth can-i`: the README's RBAC table is every right.

For each install mode (the default: the release namespace; `operator.watchNamespaces`; and
`operator.watchAllNamespaces`) the chart is installed into the real control plane and, for
each of its ServiceAccounts, the API server is asked every `kubectl auth can-i` question
(`canimatrix.py`: every verb on every resource and subresource it serves, and the table's
CRDs, in the release namespace, the served namespaces, an unserved namespace, kube-system,
and cluster-wide; and by name for the table's named rows). Minus what every authenticated
identity may do (an unbound ServiceAccount of another namespace), the "yes" answers must be
exactly those the README table gives: a right the table lacks fails the test, and so does a
row the API server does not grant. `kubectl auth can-i --list` (the rules themselves, which
catches wildcards and verbs outside the matrix) must list nothing the table lacks either.

The pods are not run: the rights are the chart's RBAC objects, whatever the processes do.
(`test_chart_install.py` runs the processes with these rights and checks that nothing they
do is refused.)
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from agentpool_dev.cluster import Cluster
from tests.chart import canimatrix, rbac_table
from tests.chart.canimatrix import Question, Resource
from tests.chart.rbac_table import Grant
from tests.plugins.chart import CHART, Helm
from tests.waiting import eventually

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@dataclass
class Install:
    name: str
    namespace: str
    mode: str
    served: tuple[str, ...]
    """The served namespaces asked about (mode "all": two namespaces with nothing special)."""
    unserved: str
    grants: set[Grant]

    @property
    def fullname(self) -> str:
        return f"{self.name}-agentpool-operator"

    @property
    def accounts(self) -> tuple[str, str]:
        return (self.fullname, f"{self.fullname}-metrics-api")

    @property
    def namespaces(self) -> tuple[str, ...]:
        """Where questions are asked (besides cluster-wide)."""
        return tuple(dict.fromkeys((self.namespace, *self.served, self.unserved,
                                    "kube-system")))


def _namespace(cluster: Cluster, created: list[str], prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    created.append(name)
    return name


@contextlib.contextmanager
def installed(cluster: Cluster, helm: Helm, mode: str) -> Iterator[Install]:
    """The chart installed in `mode` ("default", "listed" or "all") into fresh namespaces;
    uninstalled, and the namespaces deleted, afterwards."""
    created: list[str] = []
    name = f"rb-{uuid.uuid4().hex[:5]}"
    try:
        namespace = _namespace(cluster, created, "rbac")
        served = (namespace,) if mode == "default" else tuple(
            _namespace(cluster, created, "served") for _ in range(2))
        unserved = _namespace(cluster, created, "unserved")
        modes: dict[str, dict[str, Any]] = {"listed": {"watchNamespaces": list(served)},
                                            "all": {"watchAllNamespaces": True}}
        operator = modes.get(mode, {})
        # No APIService: an unavailable one (nothing runs) would disturb discovery.
        values = {"operator": operator, "crds": {"enabled": False},
                  "metricsApi": {"apiService": {"create": False}}}
        helm.run("install", name, str(CHART), "--namespace", namespace,
                 "-f", helm.values_file(values))
        table_mode = "all" if mode == "all" else "namespaced"
        grants = rbac_table.grants(rbac_table.rows(), fullname=f"{name}-agentpool-operator",
                                   release_namespace=namespace, mode=table_mode,
                                   served=served, apiservice=False)
        install = Install(name, namespace, table_mode, served, unserved, grants)
        _wait_for_rbac(cluster, install)
        yield install
    finally:
        helm.run("uninstall", name, "--namespace", created[0] if created else "default",
                 check=False)
        for namespace in created:
            cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _wait_for_rbac(cluster: Cluster, install: Install, timeout: float = 30) -> None:
    """The authorizer follows RBAC objects through a watch: wait (a while) until every right
    the table gives counts. Whatever still does not is then reported by the comparison."""
    deadline = time.monotonic() + timeout
    for account in install.accounts:
        user, groups = canimatrix.service_account(install.namespace, account)
        wanted = {Question("" if g.location == rbac_table.CLUSTER else g.location, g.group,
                           g.resource, g.verb, g.name)
                  for g in install.grants if g.account == account}
        while (canimatrix.ask(cluster.kubeconfig, user, groups, wanted) != wanted
               and time.monotonic() < deadline):
            time.sleep(0.5)


@pytest.fixture(scope="module")
def resources(cluster: Cluster) -> list[Resource]:
    """What the API server serves, the virtual resources RBAC knows, and the table's own
    resources (the Prometheus Operator's and KEDA's CRDs may not be installed)."""
    found = {(r.group, r.resource): r for r in canimatrix.served_resources(cluster)}
    for r in canimatrix.virtual_resources():
        found.setdefault((r.group, r.resource), r)
    for row in rbac_table.rows():
        for resource in row.resources:
            found.setdefault((row.group, resource), Resource(row.group, resource, True))
    return sorted(found.values())


def all_questions(install: Install, resources: list[Resource]) -> list[Question]:
    asked = canimatrix.questions(resources, install.namespaces)
    # By name, for the table's named rows: the name, and another one of that kind.
    named = {(g.group, g.resource, g.name) for g in install.grants if g.name is not None}
    for group, resource, name in sorted(named, key=str):
        for namespace in (*install.namespaces, ""):
            for verb in canimatrix.VERBS:
                asked += [Question(namespace, group, resource, verb, name),
                          Question(namespace, group, resource, verb, f"other-{name}")]
    return asked


def wrong_answers(cluster: Cluster, install: Install, account: str, asked: list[Question],
                  everyone: set[Question]) -> tuple[list[str], list[str]]:
    """(rights the table lacks, table rows the API server does not grant) for `account`."""
    user, groups = canimatrix.service_account(install.namespace, account)
    yes = canimatrix.ask(cluster.kubeconfig, user, groups, asked) - everyone
    table = {q for q in asked if rbac_table.allows(install.grants, account, q.namespace,
                                                   q.group, q.resource, q.verb, q.name)}
    return sorted(map(str, yes - table)), sorted(map(str, table - yes))


def everyone_may(cluster: Cluster, install: Install, asked: list[Question]) -> set[Question]:
    """What an unbound ServiceAccount of another namespace may do: every authenticated
    identity's rights (self-reviews and the like), none of them the chart's doing."""
    user, groups = canimatrix.service_account(install.unserved, "nobody")
    return canimatrix.ask(cluster.kubeconfig, user, groups, asked)


@pytest.mark.parametrize("mode", ["default", "listed", "all"])
def test_every_can_i_answer_is_in_the_readme_table_and_back(
        cluster: Cluster, helm: Helm, agentpool_crd: dict[str, Any],
        resources: list[Resource], mode: str) -> None:
    with installed(cluster, helm, mode) as install:
        asked = all_questions(install, resources)
        everyone = everyone_may(cluster, install, asked)
        for account in install.accounts:
            extra, missing = wrong_answers(cluster, install, account, asked, everyone)
            assert not extra, f"{account} may, but the README's RBAC table does not say so:" \
                              + "".join(f"\n  {q}" for q in extra)
            assert not missing, f"the README's RBAC table says {account} may, but it may not:" \
                                + "".join(f"\n  {q}" for q in missing)
        assert_can_i_list_is_covered(cluster, install)


def assert_can_i_list_is_covered(cluster: Cluster, install: Install) -> None:
    """Every rule `kubectl auth can-i --list` shows (the rules themselves: wildcards and any
    verb included), minus an unbound identity's, is one the table gives."""
    def listed(namespace: str, user: str) -> set[tuple[str, str, str, str]]:
        output = cluster.kubectl("auth", "can-i", "--list", "-n", namespace,
                                 f"--as={user}").stdout
        return {(group, resource, name, verb)
                for group, resource, names, verbs in rbac_table.parse_can_i_list(output)
                for name in names or ("",) for verb in verbs}

    for namespace in install.namespaces:
        everyone = listed(namespace, f"system:serviceaccount:{install.unserved}:nobody")
        for account in install.accounts:
            rules = listed(namespace, f"system:serviceaccount:{install.namespace}:{account}")
            # A non-resource URL rule ("<url>") is never in the table.
            uncovered = sorted(
                rule for rule in rules - everyone
                if not rbac_table.allows(install.grants, account, namespace, rule[0], rule[1],
                                         rule[3], rule[2] or None))
            assert not uncovered, (f"kubectl auth can-i --list -n {namespace} shows rules of "
                                   f"{account} the README's RBAC table lacks: {uncovered}")


def test_the_matrix_catches_a_right_the_table_lacks(
        cluster: Cluster, helm: Helm, agentpool_crd: dict[str, Any],
        resources: list[Resource]) -> None:
    """The comparison above can fail: one extra Role binding (reading Secrets in kube-system,
    what the metrics API could before) shows up, and nothing else does."""
    with installed(cluster, helm, "default") as install:
        account = install.accounts[1]
        binding = f"extra-{install.name}"
        manifests = [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
             "metadata": {"name": binding, "namespace": "kube-system"},
             "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": binding, "namespace": "kube-system"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                         "name": binding},
             "subjects": [{"kind": "ServiceAccount", "name": account,
                           "namespace": install.namespace}]}]
        cluster.kubectl("apply", "-f", "-", input=json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": manifests}))
        try:
            asked = [q for q in all_questions(install, resources)
                     if q.namespace == "kube-system" and q.name is None]
            everyone = everyone_may(cluster, install, asked)

            def caught() -> tuple[list[str], list[str]] | None:
                found = wrong_answers(cluster, install, account, asked, everyone)
                return found if found[0] else None

            extra, missing = eventually(caught, timeout=30)
            assert extra == ["can-i get secrets -n kube-system"]
            assert missing == []
        finally:
            cluster.kubectl("-n", "kube-system", "delete", "rolebinding,role", binding,
                            check=False)
