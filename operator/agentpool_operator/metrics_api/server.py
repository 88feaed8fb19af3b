"""The HTTPS app: `external.metrics.k8s.io/v1beta1` for the kube-apiserver's aggregator.

Built by `__main__.py`. Routes:
- `GET /apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/agentpool_queue_backlog
  ?labelSelector=agentpool.dev/pool=<name>` -> an ExternalMetricValueList with one value per
  matching pool: its waiting + in-flight tasks (`backlog.py`). Authenticated and authorised
  (`auth.py`) like any Kubernetes API request; the HPA controller asks through the aggregator.
- Discovery (`/apis`, the group, `/apis/external.metrics.k8s.io/v1beta1`) and minimal
  `/openapi/v2`, `/openapi/v3`, which the aggregator probes: any authenticated user.
- `/healthz`, `/livez`, `/readyz`: unauthenticated, for the kubelet.

When a pool's queue cannot be read the answer is 503 with the reason. The HPA then reports
`ScalingActive=False` (FailedGetExternalMetric) and keeps the current replica count: a broken
Redis never scales a pool down, and never up either, until the metric is back.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

from aiohttp import web

from agent_runtime.queue.backlog import Backlog, BacklogError, BacklogReader
from agentpool_operator.api.autoscaling import QUEUE_BACKLOG_METRIC
from agentpool_operator.metrics_api.apiserver import ApiServerError
from agentpool_operator.metrics_api.auth import Authenticator, Authorizer, UserInfo
from agentpool_operator.metrics_api.pools import PoolDirectory, PoolError, metric_labels
from agentpool_operator.metrics_api.selector import SelectorError, parse_selector
from agentpool_operator.metrics_api.telemetry import Telemetry
from agentpool_operator.queuedir import QueueEntry

log = logging.getLogger(__name__)

GROUP = "external.metrics.k8s.io"
VERSION = "v1beta1"
GROUP_VERSION = f"{GROUP}/{VERSION}"
BASE = f"/apis/{GROUP_VERSION}"


def status(code: int, reason: str, message: str) -> web.Response:
    """A `metav1.Status` error body, as Kubernetes clients expect from an API server."""
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}
    return web.json_response(body, status=code)


def resource_list() -> dict[str, Any]:
    return {
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": GROUP_VERSION,
        "resources": [{"name": QUEUE_BACKLOG_METRIC, "singularName": "", "namespaced": True,
                       "kind": "ExternalMetricValueList", "verbs": ["get"]}],
    }


def api_group() -> dict[str, Any]:
    version = {"groupVersion": GROUP_VERSION, "version": VERSION}
    return {"kind": "APIGroup", "apiVersion": "v1", "name": GROUP, "versions": [version],
            "preferredVersion": version}


def value_list(items: list[tuple[dict[str, str], int]], now: dt.datetime) -> dict[str, Any]:
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "kind": "ExternalMetricValueList", "apiVersion": GROUP_VERSION, "metadata": {},
        "items": [{"metricName": QUEUE_BACKLOG_METRIC, "metricLabels": labels,
                   "timestamp": stamp, "value": str(value)} for labels, value in items],
    }


class MetricsApi:
    """The request handlers, holding what they need."""

    def __init__(self, authenticator: Authenticator, authorizer: Authorizer,
                 pools: PoolDirectory, reader: BacklogReader, telemetry: Telemetry) -> None:
        self.authenticator = authenticator
        self.authorizer = authorizer
        self.pools = pools
        self.reader = reader
        self.telemetry = telemetry

    async def _user(self, request: web.Request) -> UserInfo | web.Response:
        transport = request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport else None
        peer = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        try:
            user = await self.authenticator.authenticate(peer, request.headers)
        except ApiServerError as error:
            log.warning("authentication failed: %s", error)
            return status(503, "ServiceUnavailable", "cannot authenticate the request now")
        if user is None:
            return status(401, "Unauthorized", "Unauthorized")
        return user

    async def discovery(self, request: web.Request) -> web.StreamResponse:
        user = await self._user(request)
        if isinstance(user, web.Response):
            return user
        path = request.path.rstrip("/")
        if path == "/apis":
            return web.json_response({"kind": "APIGroupList", "apiVersion": "v1",
                                      "groups": [api_group()]})
        if path == f"/apis/{GROUP}":
            return web.json_response(api_group())
        if path == "/openapi/v2":
            return web.json_response({"swagger": "2.0", "paths": {}, "definitions": {},
                                      "info": {"title": "agentpool-metrics",
                                               "version": VERSION}})
        if path == "/openapi/v3":
            return web.json_response({"paths": {}})
        return web.json_response(resource_list())

    async def metric(self, request: web.Request) -> web.StreamResponse:
        response = await self._metric(request)
        self.telemetry.requests.labels(str(response.status)).inc()
        return response

    async def _metric(self, request: web.Request) -> web.Response:
        namespace = request.match_info["namespace"]
        metric = request.match_info["metric"]
        user = await self._user(request)
        if isinstance(user, web.Response):
            return user
        # A GET of the collection is the `list` verb to Kubernetes authorisation (the
        # kube-apiserver in front of us checked the same attributes).
        try:
            decision = await self.authorizer.authorize(
                user, verb="list", group=GROUP, version=VERSION, resource=metric,
                namespace=namespace)
        except ApiServerError as error:
            log.warning("authorisation failed: %s", error)
            return status(503, "ServiceUnavailable", "cannot authorise the request now")
        if not decision.allowed:
            return status(403, "Forbidden", f"{metric}.{GROUP} is forbidden: User "
                          f'"{user.name}" cannot list resource "{metric}" in API group '
                          f'"{GROUP}" in the namespace "{namespace}"'
                          + (f": {decision.reason}" if decision.reason else ""))
        if metric != QUEUE_BACKLOG_METRIC:
            return status(404, "NotFound", f'external metric "{metric}" is not served here; '
                          f"this server serves {QUEUE_BACKLOG_METRIC}")
        try:
            selector = parse_selector(request.query.get("labelSelector"))
        except SelectorError as error:
            return status(400, "BadRequest", str(error))
        try:
            targets = await self.pools.select(namespace, selector)
            backlogs = await asyncio.gather(
                *(self.reader.read(t.redis_url, t.keys, *_pod_window(t)) for t in targets))
        except (PoolError, BacklogError, ApiServerError) as error:
            self.telemetry.queue_errors.inc()
            log.warning("no backlog for %r in %s: %s", request.query.get("labelSelector", ""),
                        namespace, error)
            return status(503, "ServiceUnavailable", str(error))
        items = [(metric_labels(t.name), autoscaling_value(t, b))
                 for t, b in zip(targets, backlogs, strict=True)]
        return web.json_response(value_list(items, dt.datetime.now(dt.UTC)))


def autoscaling_value(entry: QueueEntry, backlog: Backlog) -> int:
    """The backlog the HPA scales on. While tasks wait for a budget permit, the pool's pace is
    set by its API budget, not by its workers: more pods would only wait too (and burn money),
    so the value is capped at what the live pods already cover, and the HPA holds."""
    if backlog.budget_waiting and entry.target_per_pod:
        return min(backlog.total, max(backlog.live_pods, 1) * entry.target_per_pod)
    return backlog.total


def _pod_window(entry: QueueEntry) -> tuple[int, ...]:
    return (entry.lease_seconds * 1000,) if entry.lease_seconds else ()


def build_app(api: MetricsApi) -> web.Application:
    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    for path in ("/healthz", "/livez", "/readyz"):
        app.router.add_get(path, ok)
    for path in ("/apis", f"/apis/{GROUP}", BASE, "/openapi/v2", "/openapi/v3"):
        app.router.add_get(path, api.discovery)
        app.router.add_get(path + "/", api.discovery)
    app.router.add_get(BASE + "/namespaces/{namespace}/{metric}", api.metric)
    return app
