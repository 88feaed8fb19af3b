"""The metrics API server's only caller of the Kubernetes API (lightkube, asyncio).

Used by `auth.py` (the authentication ConfigMap, TokenReview, SubjectAccessReview) and
`pools.py` (the operator's queue directory Secret). It reads and writes nothing else: the
server holds no write right (the reviews are queries the API server does not store).
Third-party errors are mapped here to `ApiServerError`; a missing object is None. What this needs
in RBAC is listed in the package docstring.
"""

from __future__ import annotations

from typing import Any, cast

import httpx2 as httpx
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.authentication_v1 import TokenReviewSpec
from lightkube.models.authorization_v1 import ResourceAttributes, SubjectAccessReviewSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources import authentication_v1, authorization_v1, core_v1

FIELD_MANAGER = "agentpool-metrics-apiserver"
"""The client's name in the API server's audit log (it never writes an object)."""


class ApiServerError(Exception):
    """The API server could not answer (or refused); the message names the request."""


def _as_dict(obj: Any) -> dict[str, Any]:
    result: dict[str, Any] = obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
    return result


class ApiServer:
    """The few API calls the metrics API server makes."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    @classmethod
    def from_environment(cls) -> ApiServer:
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
            raise ApiServerError(f"{what}: {error.status.code} {error.status.message}") from None
        except httpx.HTTPError as error:
            raise ApiServerError(f"{what}: {error}") from None

    async def config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        found = await self._call(f"get ConfigMap {namespace}/{name}", self._client.get(
            core_v1.ConfigMap, name, namespace=namespace), missing_ok=True)
        return None if found is None else dict(found.data or {})

    async def secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's `data` (base64 values, as served); None when it does not exist. Used for
        the operator's queue directory only, the one Secret RBAC lets this server read."""
        secret = await self._call(f"get Secret {namespace}/{name}", self._client.get(
            core_v1.Secret, name, namespace=namespace), missing_ok=True)
        return None if secret is None else dict(secret.data or {})

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
