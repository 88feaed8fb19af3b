"""A test double for the operator's Kubernetes adapter (`agentpool_operator.k8s.Kube`): the
pod and Secret calls of the deletion-cost pass and the queue-directory publisher, and the
APIService caBundle of the certificate keeper."""

from __future__ import annotations

import base64
import copy
from dataclasses import dataclass, field
from typing import Any, cast

from agentpool_operator.errors import ApiFailure
from agentpool_operator.k8s import Kube

INSTANCE_LABEL = "app.kubernetes.io/instance"


def pod(name: str, pool: str, cost: str | None = None, terminating: bool = False
        ) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {INSTANCE_LABEL: pool}, "annotations": {}}
    if cost is not None:
        meta["annotations"]["controller.kubernetes.io/pod-deletion-cost"] = cost
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta}


@dataclass
class FakeOperatorKube:
    pods: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Pods by namespace."""
    secrets: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    refuse_writes: str | None = None
    """When set, every write fails with a 403 carrying this message."""
    pod_lists: list[tuple[str, str]] = field(default_factory=list)
    patches: list[tuple[str, str, str, str]] = field(default_factory=list)
    applied: list[dict[str, Any]] = field(default_factory=list)
    gets: int = 0
    apiservices: dict[str, str] = field(default_factory=dict)
    """caBundle by APIService name."""
    owners: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    """Per Secret, the field manager that applied each data key."""

    def as_kube(self) -> Kube:
        return cast(Kube, self)

    async def list_pods(self, namespace: str, selector: dict[str, str]
                        ) -> list[dict[str, Any]]:
        self.pod_lists.append((namespace, selector[INSTANCE_LABEL]))
        return [copy.deepcopy(p) for p in self.pods.get(namespace, [])
                if p["metadata"]["labels"][INSTANCE_LABEL] == selector[INSTANCE_LABEL]]

    async def annotate_pod(self, namespace: str, name: str, key: str, value: str) -> None:
        self._write(f"annotate pod {namespace}/{name}")
        self.patches.append((namespace, name, key, value))
        for item in self.pods.get(namespace, []):
            if item["metadata"]["name"] == name:
                item["metadata"]["annotations"][key] = value

    async def get(self, api_version: str, kind: str, namespace: str, name: str
                  ) -> dict[str, Any] | None:
        assert (api_version, kind) == ("v1", "Secret")
        self.gets += 1
        found = self.secrets.get((namespace, name))
        return copy.deepcopy(found) if found is not None else None

    async def apply(self, manifest: dict[str, Any], field_manager: str | None = None
                    ) -> dict[str, Any]:
        meta = manifest["metadata"]
        self._write(f"apply {manifest['kind']} {meta['namespace']}/{meta['name']}")
        self.applied.append(copy.deepcopy(manifest))
        stored = self.secrets.setdefault((meta["namespace"], meta["name"]),
                                         {"kind": "Secret", "metadata": dict(meta)})
        # Server-side apply: a field manager's keys replace what that manager applied before,
        # and leave the keys of other managers alone.
        manager = field_manager or "agentpool-operator"
        owned = self.owners.setdefault((meta["namespace"], meta["name"]), {})
        data = stored.setdefault("data", {})
        for key in [k for k, m in owned.items() if m == manager and k not in manifest["data"]]:
            data.pop(key, None)
            owned.pop(key)
        data.update(manifest["data"])
        owned.update({key: manager for key in manifest["data"]})
        return copy.deepcopy(stored)

    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        found = await self.get("v1", "Secret", namespace, name)
        if found is None:
            return None
        return {k: base64.b64decode(v).decode() for k, v in (found.get("data") or {}).items()}

    async def apiservice_ca_bundle(self, name: str) -> str | None:
        return self.apiservices.get(name)

    async def set_apiservice_ca_bundle(self, name: str, bundle: str) -> None:
        self._write(f"apply APIService {name}")
        self.applied.append({"kind": "APIService", "metadata": {"name": name},
                             "spec": {"caBundle": bundle}})
        self.apiservices[name] = bundle

    def _write(self, what: str) -> None:
        if self.refuse_writes is not None:
            raise ApiFailure(f"{what}: 403 {self.refuse_writes}", code=403)
