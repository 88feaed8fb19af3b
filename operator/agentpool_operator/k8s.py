"""The operator's only caller of the Kubernetes API (lightkube, asyncio).

Everything else works on plain manifest dicts. Third-party errors are mapped here, in one place,
to the operator's own: a missing object is `None`, a conflict or an unavailable server is a
`TransientError` (retried with backoff), anything else is an `ApiFailure` naming the request.
Every write is counted, so the steady-state "zero writes" promise is observable in metrics.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import importlib
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from typing import Any, cast

import httpx2 as httpx
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.core.resource import NamespacedResource
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources import apiextensions_v1, apiregistration_v1, coordination_v1, core_v1
from lightkube.types import PatchType

from agentpool_operator.api import BUDGET_KIND, BUDGET_PLURAL, GROUP, KIND, PLURAL, VERSION
from agentpool_operator.builders.kinds import CHILD_KINDS, ChildKind
from agentpool_operator.errors import ApiFailure, Expired, TransientError
from agentpool_operator.leader import LeaseConflict, LeaseRecord

FIELD_MANAGER = "agentpool-operator"
MANAGED_BY = {"app.kubernetes.io/managed-by": "agentpool-operator"}
"""The label on every child: the watches and lists of children select on it."""

AgentPoolResource = create_namespaced_resource(GROUP, VERSION, KIND, PLURAL)
AgentBudgetResource = create_namespaced_resource(GROUP, VERSION, BUDGET_KIND, BUDGET_PLURAL)


def _child_resource(child: ChildKind) -> type[NamespacedResource]:
    """lightkube's typed class for a built-in kind, a generic one for a CRD's."""
    if "." not in child.group:  # a built-in API group ("" is the core group)
        module = importlib.import_module(
            f"lightkube.resources.{child.group or 'core'}_{child.version}")
        typed: type[NamespacedResource] = getattr(module, child.kind)
        return typed
    return create_namespaced_resource(child.group, child.version, child.kind, child.plural)


_RESOURCES: dict[tuple[str, str], type[NamespacedResource]] = {
    **{(child.api_version, child.kind): _child_resource(child) for child in CHILD_KINDS},
    (f"{GROUP}/{VERSION}", KIND): AgentPoolResource,
    (f"{GROUP}/{VERSION}", BUDGET_KIND): AgentBudgetResource,
}
_TRANSIENT_CODES = {409, 429, 500, 502, 503, 504}

WriteCounter = Callable[[str, str], None]


def resource_for(api_version: str, kind: str) -> type[NamespacedResource]:
    return _RESOURCES[(api_version, kind)]


def _as_dict(obj: Any) -> dict[str, Any]:
    result: dict[str, Any] = obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
    return result


def _as_watched(obj: Any, api_version: str, kind: str) -> dict[str, Any]:
    """A listed or watched object as a dict, without its managedFields (often its largest
    part; nothing reads it) from the start, and with its kind (a list's items lack it)."""
    body = _as_dict(obj)
    meta = body.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
    body.setdefault("apiVersion", api_version)
    body.setdefault("kind", kind)
    return body


class _NotFound(Exception):
    """Internal: the object is absent; callers turn it into None, False or a no-op."""


@contextlib.contextmanager
def _calling(what: str) -> Iterator[None]:
    """Map lightkube's and httpx's errors for the request `what` to the operator's own."""
    try:
        yield
    except ApiError as error:
        code = error.status.code or 0
        if code == 404:
            raise _NotFound(what) from error
        if code == 410:
            raise Expired(f"{what}: {error.status.message or error}") from error
        message = f"{what}: {code} {error.status.message or error}"
        if code in _TRANSIENT_CODES:
            raise TransientError(message) from error
        raise ApiFailure(message, code=code) from error
    except httpx.HTTPStatusError as error:
        # A watch's answer before its stream starts (lightkube raises httpx's own error).
        code = error.response.status_code
        if code == 404:
            raise _NotFound(what) from error
        if code == 410:
            raise Expired(f"{what}: {code}") from error
        raise TransientError(f"{what}: {code}") from error
    except httpx.HTTPError as error:
        raise TransientError(f"{what}: {error}") from error


class Kube:
    """Typed-enough access to the few API calls the operator makes."""

    def __init__(self, client: AsyncClient, count_write: WriteCounter | None = None) -> None:
        self._client = client
        self._count_write = count_write or (lambda verb, kind: None)

    @classmethod
    def from_environment(cls, count_write: WriteCounter | None = None) -> Kube:
        """In-cluster service account, or the kubeconfig from $KUBECONFIG / ~/.kube/config."""
        return cls(AsyncClient(field_manager=FIELD_MANAGER), count_write)

    async def close(self) -> None:
        await self._client.close()

    def leases(self, namespace: str, name: str) -> KubeLeases:
        """The leader election's Lease, on the same connection."""
        return KubeLeases(self._client, namespace, name)

    async def get(self, api_version: str, kind: str, namespace: str, name: str
                  ) -> dict[str, Any] | None:
        try:
            with _calling(f"get {kind} {namespace}/{name}"):
                obj = await self._client.get(resource_for(api_version, kind), name,
                                             namespace=namespace)
        except _NotFound:
            return None
        return _as_dict(obj)

    async def list_pools(self, namespace: str | None, each: Callable[[dict[str, Any]], None],
                         *, chunk_size: int = 100) -> None:
        """Every AgentPool (in one namespace or all), handed to `each` a chunk at a time: a
        list of a thousand pools in one answer was the operator's memory peak."""
        with _calling("list agentpools"):
            async for obj in self._client.list(AgentPoolResource, namespace=namespace or "*",
                                               chunk_size=chunk_size):
                each(_as_watched(obj, f"{GROUP}/{VERSION}", KIND))

    async def list_managed(self, api_version: str, kind: str, namespace: str | None,
                           each: Callable[[dict[str, Any]], None], *, chunk_size: int) -> str:
        """List the objects of a kind the operator manages (by label) `chunk_size` at a time,
        handing each to `each` before the next chunk is fetched, so no more than one chunk of
        bodies is alive at once; the list's resourceVersion (to watch from). A missing kind
        (its CRD gone) raises `ApiFailure` with code 404."""
        what = f"list {kind} in {namespace or 'all namespaces'}"
        try:
            with _calling(what):
                listing = self._client.list(
                    resource_for(api_version, kind), namespace=namespace or "*",
                    labels=dict(MANAGED_BY), chunk_size=chunk_size)
                async for obj in listing:
                    each(_as_watched(obj, api_version, kind))
                return listing.resourceVersion
        except _NotFound as error:
            raise ApiFailure(f"{what}: 404 not found", code=404) from error

    async def watch_managed(self, api_version: str, kind: str, namespace: str | None,
                            resource_version: str, *, timeout_seconds: int
                            ) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
        """The changes to the managed objects of a kind after `resource_version`, as (event
        type, body). Raises `Expired` when that version is too old (relist), `ApiFailure`
        with code 404 when the kind is gone, `TransientError` on a broken connection."""
        what = f"watch {kind} in {namespace or 'all namespaces'}"
        try:
            with _calling(what):
                async for event_type, obj in self._client.watch(
                        resource_for(api_version, kind), namespace=namespace or "*",
                        labels=dict(MANAGED_BY), resource_version=resource_version,
                        server_timeout=timeout_seconds):
                    yield event_type, _as_watched(obj, api_version, kind)
        except _NotFound as error:
            raise ApiFailure(f"{what}: 404 not found", code=404) from error

    async def list_pods(self, namespace: str, selector: Mapping[str, str]
                        ) -> list[dict[str, Any]]:
        with _calling(f"list pods in {namespace}"):
            return [_as_dict(pod) async for pod in self._client.list(
                core_v1.Pod, namespace=namespace, labels=dict(selector))]

    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        """The decoded data of a Secret, or None if it does not exist."""
        secret = await self.get("v1", "Secret", namespace, name)
        if secret is None:
            return None
        decoded = {k: base64.b64decode(v).decode("utf-8", "replace")
                   for k, v in (secret.get("data") or {}).items()}
        decoded.update(secret.get("stringData") or {})
        return decoded

    async def apply(self, manifest: dict[str, Any], field_manager: str | None = None
                    ) -> dict[str, Any]:
        """Server-side apply under our field manager (or `field_manager`), taking ownership of
        conflicting fields."""
        meta = manifest["metadata"]
        kind = manifest["kind"]
        self._count_write("apply", kind)
        with _calling(f"apply {kind} {meta['namespace']}/{meta['name']}"):
            obj = await self._client.patch(
                resource_for(manifest["apiVersion"], kind), meta["name"], manifest,
                namespace=meta["namespace"], patch_type=PatchType.APPLY,
                field_manager=field_manager or FIELD_MANAGER, force=True,
            )
        return _as_dict(obj)

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self._count_write("delete", kind)
        with contextlib.suppress(_NotFound), _calling(f"delete {kind} {namespace}/{name}"):
            await self._client.delete(resource_for(api_version, kind), name, namespace=namespace)

    async def annotate_pod(self, namespace: str, name: str, key: str, value: str) -> None:
        """Set one annotation of a pod with a JSON merge patch (nothing else of the pod); a
        pod that is gone is no error."""
        self._count_write("patch", "Pod")
        patch = {"metadata": {"annotations": {key: value}}}
        with contextlib.suppress(_NotFound), _calling(f"annotate pod {namespace}/{name}"):
            await self._client.patch(core_v1.Pod, name, patch, namespace=namespace,
                                     patch_type=PatchType.MERGE)

    async def patch_pool_status(self, namespace: str, name: str, status: dict[str, Any]
                                ) -> dict[str, Any] | None:
        """Merge `status` into the pool's status; the pool as written, None if it is gone."""
        self._count_write("patch-status", KIND)
        try:
            with _calling(f"update status of AgentPool {namespace}/{name}"):
                obj = await self._client.patch(
                    AgentPoolResource.Status, name, {"status": status}, namespace=namespace,
                    patch_type=PatchType.MERGE,
                )
        except _NotFound:
            return None
        return _as_dict(obj)

    async def apiservice_ca_bundle(self, name: str) -> str | None:
        """The APIService's spec.caBundle (base64, "" when unset); None when it is absent."""
        try:
            with _calling(f"get APIService {name}"):
                found = await self._client.get(apiregistration_v1.APIService, name)
        except _NotFound:
            return None
        return (found.spec.caBundle if found.spec else None) or ""

    async def set_apiservice_ca_bundle(self, name: str, bundle: str) -> None:
        """Apply spec.caBundle (base64) alone: the rest of the APIService is the chart's."""
        self._count_write("apply", "APIService")
        manifest = {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                    "metadata": {"name": name}, "spec": {"caBundle": bundle}}
        with _calling(f"apply caBundle of APIService {name}"):
            await self._client.patch(apiregistration_v1.APIService, name, manifest,
                                     patch_type=PatchType.APPLY, field_manager=FIELD_MANAGER,
                                     force=True)

    async def patch_budget_status(self, namespace: str, name: str, status: dict[str, Any]
                                  ) -> dict[str, Any] | None:
        """Merge `status` into an AgentBudget's status; the budget as written, None if gone."""
        self._count_write("patch-status", BUDGET_KIND)
        try:
            with _calling(f"update status of AgentBudget {namespace}/{name}"):
                obj = await self._client.patch(
                    AgentBudgetResource.Status, name, {"status": status}, namespace=namespace,
                    patch_type=PatchType.MERGE,
                )
        except _NotFound:
            return None
        return _as_dict(obj)

    async def crd_exists(self, name: str) -> bool:
        """Whether a CRD is installed (e.g. the Prometheus Operator's PodMonitor)."""
        try:
            with _calling(f"get CRD {name}"):
                await self._client.get(apiextensions_v1.CustomResourceDefinition, name)
        except _NotFound:
            return False
        return True

    async def post_event(self, pool: dict[str, Any], kind: str, reason: str, message: str
                         ) -> None:
        """A core/v1 Event on the AgentPool. Messages never contain secret values."""
        meta = pool["metadata"]
        now = dt.datetime.now(dt.UTC)
        event = cast(core_v1.Event, core_v1.Event.from_dict({
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": pool["apiVersion"], "kind": KIND, "name": meta["name"],
                "namespace": meta["namespace"], "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": kind, "reason": reason, "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "firstTimestamp": now.isoformat(), "lastTimestamp": now.isoformat(), "count": 1,
        }))
        self._count_write("create", "Event")
        try:
            await self._client.create(event)
        except (ApiError, httpx.HTTPError):
            # An event is best effort: failing to post one must not fail the reconcile.
            return


class KubeLeases:
    """The leader election's Lease (`leader.LeaseStore`), read and replaced with optimistic
    concurrency (the resourceVersion read). Not counted as writes: renewing the lease is
    the election's heartbeat, not a change the operator makes."""

    def __init__(self, client: AsyncClient, namespace: str, name: str) -> None:
        self._client = client
        self._namespace = namespace
        self._name = name

    def _lease(self, record: LeaseRecord, resource_version: str | None) -> coordination_v1.Lease:
        return coordination_v1.Lease(
            metadata=ObjectMeta(name=self._name, namespace=self._namespace,
                                resourceVersion=resource_version),
            spec=LeaseSpec(holderIdentity=record.holder,
                           leaseDurationSeconds=record.duration_seconds,
                           acquireTime=record.acquired, renewTime=record.renewed,
                           leaseTransitions=record.transitions))

    @staticmethod
    def _version(lease: coordination_v1.Lease) -> str:
        return (lease.metadata.resourceVersion if lease.metadata else None) or ""

    async def read(self) -> tuple[LeaseRecord, str] | None:
        try:
            with _calling(f"get Lease {self._namespace}/{self._name}"):
                lease = await self._client.get(coordination_v1.Lease, self._name,
                                               namespace=self._namespace)
        except _NotFound:
            return None
        spec = lease.spec or LeaseSpec()
        record = LeaseRecord(holder=spec.holderIdentity or "",
                             duration_seconds=spec.leaseDurationSeconds or 0,
                             acquired=spec.acquireTime, renewed=spec.renewTime,
                             transitions=spec.leaseTransitions or 0)
        return record, self._version(lease)

    async def create(self, record: LeaseRecord) -> str:
        with _lease_conflicts(), _calling(f"create Lease {self._namespace}/{self._name}"):
            return self._version(await self._client.create(self._lease(record, None)))

    async def update(self, record: LeaseRecord, resource_version: str) -> str:
        with _lease_conflicts(), _calling(f"update Lease {self._namespace}/{self._name}"):
            return self._version(await self._client.replace(
                self._lease(record, resource_version)))


@contextlib.contextmanager
def _lease_conflicts() -> Iterator[None]:
    """A 409 (changed since read, or created meanwhile) means another candidate came first."""
    try:
        yield
    except TransientError as error:
        if isinstance(error.__cause__, ApiError) and error.__cause__.status.code == 409:
            raise LeaseConflict(str(error)) from error
        raise
