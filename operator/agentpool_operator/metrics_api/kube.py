"""The metrics API server's only caller of the Kubernetes API (lightkube, asyncio).

Used by `auth.py` (the authentication ConfigMap, TokenReview, SubjectAccessReview),
`pools.py` (AgentPools and the Secrets they reference) and `podcost.py` (pods, and the
deletion-cost patch). Third-party errors are mapped here to `KubeError`; a missing object is
None. What this needs in RBAC is listed in the package docstring.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, cast

import httpx2 as httpx
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.authentication_v1 import TokenReviewSpec
from lightkube.models.authorization_v1 import ResourceAttributes, SubjectAccessReviewSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources import authentication_v1, authorization_v1, core_v1
from lightkube.types import PatchType

from agentpool_operator.k8s import AgentPoolResource

FIELD_MANAGER = "agentpool-metrics-apiserver"


class KubeError(Exception):
    """The API server could not answer (or refused); the message names the request."""


def _as_dict(obj: Any) -> dict[str, Any]:
    result: dict[str, Any] = obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
    return result


class Kube:
    """The few API calls the metrics API server makes."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    @classmethod
    def from_environment(cls) -> Kube:
        """In-cluster service account, or the kubeconfig from $KUBECONFIG / ~/.kube/config."""
        return cls(AsyncClient(field_manager=FIELD_MANAGER,
                               timeout=httpx.Timeout(10.0)))

    async def close(self) -> None:
        await self._client.close()

    async def _call(self, what: str, call: Any, missing_ok: bool = False) -> Any:
        try:
            return await call
        except ApiError as error:
            if missing_ok and error.status.code == 404:
                return None
            raise KubeError(f"{what}: {error.status.code} {error.status.message}") from None
        except httpx.HTTPError as error:
            raise KubeError(f"{what}: {error}") from None

    async def config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        found = await self._call(f"get ConfigMap {namespace}/{name}", self._client.get(
            core_v1.ConfigMap, name, namespace=namespace), missing_ok=True)
        return None if found is None else dict(found.data or {})

    async def get_pool(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = await self._call(f"get AgentPool {namespace}/{name}", self._client.get(
            AgentPoolResource, name, namespace=namespace), missing_ok=True)
        return None if found is None else _as_dict(found)

    async def list_pools(self, namespace: str | None) -> list[dict[str, Any]]:
        what = f"list AgentPools in {namespace or 'all namespaces'}"
        try:
            return [_as_dict(pool) async for pool in self._client.list(
                AgentPoolResource, namespace=namespace or "*")]
        except ApiError as error:
            raise KubeError(f"{what}: {error.status.code} {error.status.message}") from None
        except httpx.HTTPError as error:
            raise KubeError(f"{what}: {error}") from None

    async def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        """One decoded value of a Secret; None when the Secret or the key is missing."""
        secret = await self._call(f"get Secret {namespace}/{name}", self._client.get(
            core_v1.Secret, name, namespace=namespace), missing_ok=True)
        if secret is None:
            return None
        encoded = (secret.data or {}).get(key)
        if encoded is None:
            return None
        return base64.b64decode(encoded).decode("utf-8", "replace")

    async def list_pods(self, namespace: str, selector: Mapping[str, str]
                        ) -> list[dict[str, Any]]:
        what = f"list pods in {namespace}"
        try:
            return [_as_dict(pod) async for pod in self._client.list(
                core_v1.Pod, namespace=namespace, labels=dict(selector))]
        except ApiError as error:
            raise KubeError(f"{what}: {error.status.code} {error.status.message}") from None
        except httpx.HTTPError as error:
            raise KubeError(f"{what}: {error}") from None

    async def annotate_pod(self, namespace: str, name: str, key: str, value: str) -> None:
        """Set one annotation with a JSON merge patch (touches nothing else of the pod)."""
        patch = {"metadata": {"annotations": {key: value}}}
        await self._call(f"patch pod {namespace}/{name}", self._client.patch(
            core_v1.Pod, name, patch, namespace=namespace, patch_type=PatchType.MERGE,
            field_manager=FIELD_MANAGER), missing_ok=True)

    async def token_review(self, token: str) -> dict[str, Any] | None:
        """The user a bearer token belongs to (`status.user`), or None if not authenticated.
        The token itself is never part of an error message."""
        review = authentication_v1.TokenReview(
            metadata=ObjectMeta(), spec=TokenReviewSpec(token=token))
        result = await self._call("create TokenReview", self._client.create(review))
        status = _as_dict(result).get("status") or {}
        if not status.get("authenticated"):
            return None
        return cast(dict[str, Any], status.get("user") or {})

    async def subject_access_review(
        self, user: str, groups: list[str], extra: dict[str, list[str]], uid: str,
        attributes: ResourceAttributes,
    ) -> tuple[bool, str]:
        """Whether the API server's authorizers allow the request; (allowed, reason)."""
        review = authorization_v1.SubjectAccessReview(
            metadata=ObjectMeta(),
            spec=SubjectAccessReviewSpec(user=user, groups=groups, extra=extra or None,
                                         uid=uid or None, resourceAttributes=attributes))
        result = await self._call("create SubjectAccessReview", self._client.create(review))
        status = _as_dict(result).get("status") or {}
        return bool(status.get("allowed")), str(status.get("reason") or "")
