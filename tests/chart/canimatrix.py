"""The `kubectl auth can-i` matrix: every question about one identity, asked of the real API
server.

`kubectl auth can-i VERB RESOURCE[/SUBRESOURCE] [NAME] -n NS --as USER` sends one access
review and prints the answer; asking tens of thousands of questions one process each would
take half an hour, so `ask` sends the same review (a SubjectAccessReview for the user and the
groups the API server gives a ServiceAccount: what impersonating it yields) concurrently
from one client. The questions: every verb Kubernetes authorises on every resource and
subresource the server serves (discovery), plus the resources named by the README's table
whose CRDs may be absent, in each namespace asked about, and cluster-wide (`""`: a
cluster-scoped resource, or a namespaced one in all namespaces at once).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lightkube import AsyncClient, KubeConfig
from lightkube.models.authorization_v1 import ResourceAttributes, SubjectAccessReviewSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources import authorization_v1

from agentpool_dev.cluster import Cluster

VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
# Verbs RBAC knows besides the usual ones, on the resources that have them.
SPECIAL_VERBS: dict[tuple[str, str], tuple[str, ...]] = {
    ("rbac.authorization.k8s.io", "roles"): ("bind", "escalate"),
    ("rbac.authorization.k8s.io", "clusterroles"): ("bind", "escalate"),
    ("", "serviceaccounts"): ("impersonate",),
    ("", "users"): ("impersonate",),
    ("", "groups"): ("impersonate",),
    ("authentication.k8s.io", "userextras"): ("impersonate",),
    ("authentication.k8s.io", "uids"): ("impersonate",),
    ("certificates.k8s.io", "signers"): ("approve", "sign", "attest"),
}
CONCURRENCY = 24


@dataclass(frozen=True, order=True)
class Resource:
    group: str
    resource: str
    """`plural` or `plural/subresource`."""
    namespaced: bool


@dataclass(frozen=True, order=True)
class Question:
    namespace: str
    """"" for cluster-wide."""
    group: str
    resource: str
    verb: str
    name: str | None = None

    def __str__(self) -> str:
        where = f"-n {self.namespace}" if self.namespace else "cluster-wide"
        group = f".{self.group}" if self.group else ""
        base, _, sub = self.resource.partition("/")
        what = f"{base}{group}" + (f"/{sub}" if sub else "")
        return f"can-i {self.verb} {what}{' ' + self.name if self.name else ''} {where}"


def served_resources(cluster: Cluster) -> list[Resource]:
    """Every resource and subresource the API server serves (preferred version of each
    group), from discovery."""
    def raw(path: str) -> dict[str, object]:
        result: dict[str, object] = json.loads(cluster.kubectl("get", "--raw", path).stdout)
        return result

    lists = [("", raw("/api/v1"))]
    groups = raw("/apis")["groups"]
    assert isinstance(groups, list)
    for group in groups:
        preferred = group["preferredVersion"]["groupVersion"]
        lists.append((group["name"], raw(f"/apis/{preferred}")))
    found = set()
    for group_name, listing in lists:
        items = listing["resources"]
        assert isinstance(items, list)
        found |= {Resource(group_name, item["name"], bool(item["namespaced"]))
                  for item in items}
    return sorted(found)


def virtual_resources() -> list[Resource]:
    """Resources RBAC rules may name that discovery does not list (impersonation, signers)."""
    return [Resource("", "users", False), Resource("", "groups", False),
            Resource("authentication.k8s.io", "userextras", False),
            Resource("authentication.k8s.io", "uids", False),
            Resource("certificates.k8s.io", "signers", False)]


def questions(resources: Iterable[Resource], namespaces: Iterable[str]) -> list[Question]:
    """Every verb on every resource: namespaced ones in each namespace and in all at once,
    cluster-scoped ones cluster-wide."""
    found = []
    namespaces = tuple(namespaces)
    for r in resources:
        verbs = VERBS + SPECIAL_VERBS.get((r.group, r.resource), ())
        for namespace in ((*namespaces, "") if r.namespaced else ("",)):
            found += [Question(namespace, r.group, r.resource, verb) for verb in verbs]
    return found


def service_account(namespace: str, name: str) -> tuple[str, list[str]]:
    """The user and groups the API server gives a ServiceAccount's tokens (and impersonation
    of it: `--as system:serviceaccount:NS:NAME`)."""
    return (f"system:serviceaccount:{namespace}:{name}",
            ["system:serviceaccounts", f"system:serviceaccounts:{namespace}",
             "system:authenticated"])


async def _ask(client: AsyncClient, user: str, groups: list[str], question: Question) -> bool:
    resource, _, subresource = question.resource.partition("/")
    review = authorization_v1.SubjectAccessReview(
        metadata=ObjectMeta(),
        spec=SubjectAccessReviewSpec(user=user, groups=groups, resourceAttributes=(
            ResourceAttributes(namespace=question.namespace or None, verb=question.verb,
                               group=question.group, resource=resource,
                               subresource=subresource or None, name=question.name))))
    answer = await client.create(review)
    return bool(answer.status and answer.status.allowed)


def ask(kubeconfig: Path, user: str, groups: list[str], asked: Iterable[Question]
        ) -> set[Question]:
    """The questions the API server answers "yes" for `user` in `groups`."""
    async def run() -> set[Question]:
        client = AsyncClient(config=KubeConfig.from_file(kubeconfig))
        limit = asyncio.Semaphore(CONCURRENCY)

        async def one(question: Question) -> tuple[Question, bool]:
            async with limit:
                return question, await _ask(client, user, groups, question)

        try:
            answers = await asyncio.gather(*(one(q) for q in asked))
        finally:
            await client.close()
        return {question for question, allowed in answers if allowed}

    return asyncio.run(run())
