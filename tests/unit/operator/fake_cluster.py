"""An in-memory stand-in for the operator's Kubernetes adapter (`agentpool_operator.k8s.Kube`),
for unit tests of the reconcile's plan, applier and status writer.

It keeps objects by (api version, kind, namespace, name), gives each write a new
resourceVersion, applies a manifest by replacing what it sets (enough for these tests: they
are about which requests are made, not about merge semantics, which the e2e tests cover
against the real API server), and records every request so tests can assert on them.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from typing import Any, cast

from agentpool_operator.errors import ApiFailure
from agentpool_operator.k8s import Kube

ObjectKey = tuple[str, str, str, str]


def key_of(manifest: dict[str, Any]) -> ObjectKey:
    meta = manifest["metadata"]
    return (manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])


@dataclass
class FakeCluster:
    objects: dict[ObjectKey, dict[str, Any]] = field(default_factory=dict)
    secrets: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    """Referenced Secrets' decoded values, as `read_secret` returns them."""
    refuse: dict[tuple[str, str], int] = field(default_factory=dict)
    """(api version, kind) -> HTTP code every apply of that kind fails with."""
    refuse_once: dict[tuple[str, str], int] = field(default_factory=dict)
    """(api version, kind) -> HTTP code the next apply of that kind fails with."""
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    """(verb, kind, name) of every request, in order."""
    events: list[tuple[str, str, str]] = field(default_factory=list)
    """(type, reason, message) of every posted Event."""
    crds: set[str] = field(default_factory=set)
    pods: list[dict[str, Any]] = field(default_factory=list)
    """What `list_pods` returns."""
    _versions: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def as_kube(self) -> Kube:
        return cast(Kube, self)

    def writes(self) -> list[tuple[str, str, str]]:
        return [r for r in self.requests if r[0] in ("apply", "delete", "status")]

    def put(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Store an object as if someone (not the operator) had created it."""
        stored = copy.deepcopy(manifest)
        stored["metadata"].setdefault("uid", f"uid-{manifest['metadata']['name']}")
        stored["metadata"]["resourceVersion"] = str(next(self._versions))
        stored["metadata"].setdefault("generation", 1)
        self.objects[key_of(manifest)] = stored
        return copy.deepcopy(stored)

    async def get(self, api_version: str, kind: str, namespace: str, name: str
                  ) -> dict[str, Any] | None:
        self.requests.append(("get", kind, name))
        found = self.objects.get((api_version, kind, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(("apply", manifest["kind"], manifest["metadata"]["name"]))
        kind = (manifest["apiVersion"], manifest["kind"])
        code = self.refuse.get(kind) or self.refuse_once.pop(kind, None)
        if code is not None:
            raise ApiFailure(f"apply {manifest['kind']} {manifest['metadata']['name']}: "
                             f"{code} refused", code=code)
        live = self.objects.get(key_of(manifest))
        merged = copy.deepcopy(manifest)
        if live is not None:
            merged["metadata"] = {**live["metadata"], **merged["metadata"]}
            merged["metadata"]["generation"] = int(live["metadata"].get("generation", 1)) + 1
        return self.put(merged)

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self.requests.append(("delete", kind, name))
        self.objects.pop((api_version, kind, namespace, name), None)

    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        self.requests.append(("get", "Secret", name))
        return self.secrets.get((namespace, name))

    async def list_pods(self, namespace: str, selector: Any) -> list[dict[str, Any]]:
        self.requests.append(("list", "Pod", namespace))
        return copy.deepcopy(self.pods)

    async def patch_pool_status(self, namespace: str, name: str, status: dict[str, Any]
                                ) -> dict[str, Any] | None:
        self.requests.append(("status", "AgentPool", name))
        pool = self.objects[("agentpool.dev/v1alpha1", "AgentPool", namespace, name)]
        pool["status"] = copy.deepcopy(status)
        pool["metadata"]["resourceVersion"] = str(next(self._versions))
        return copy.deepcopy(pool)

    async def crd_exists(self, name: str) -> bool:
        return name in self.crds

    async def post_event(self, pool: dict[str, Any], kind: str, reason: str, message: str
                         ) -> None:
        self.events.append((kind, reason, message))
