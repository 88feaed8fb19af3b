"""agentpool-metrics-apiserver: queue-length autoscaling for AgentPools, out of the box.

A small aggregated API server, shipped with the operator package and run as its own
Deployment (`python -m agentpool_operator.metrics_api`). It serves
`external.metrics.k8s.io/v1beta1` through an APIService, so the HPA the operator renders for
each autoscaled pool (`builders/hpa.py`: External metric `agentpool_queue_backlog`, selector
`agentpool.dev/pool=<pool>`) gets the pool's waiting + in-flight tasks straight from Redis,
with no Prometheus or adapter in the scaling path. It also exports the queue gauges on
`/metrics` (for dashboards and, on clusters that already run prometheus-adapter, for its
rules in `adapter_rules.py`).

It is the network-facing component, so it holds as little as it can: no write right at
all, and no Secret but one. Where each pool's queue lives (Redis URL and keys) comes from the
queue directory the operator publishes in one Secret of its own namespace
(`agentpool_operator/queuedir.py`); the pod deletion costs are the operator's job
(`agentpool_operator/deletioncost.py`).

Modules: `server` (HTTPS app), `auth` (delegated authentication and authorisation), `tls`,
`selector` (label selectors), `pools` (the queue directory), `backlog` (Redis reads),
`gauges` (the periodic gauge refresh), `telemetry`, `kube` (the only API caller).

RBAC it needs, in full (the chart's README has the table its tests check):
- `authentication.k8s.io` tokenreviews: create; `authorization.k8s.io` subjectaccessreviews:
  create (the upstream ClusterRole `system:auth-delegator` has exactly these). Reviews are
  questions the API server answers and does not store: no object is written;
- configmaps `extension-apiserver-authentication` in kube-system: get (list, watch) (Role
  binding to the upstream `extension-apiserver-authentication-reader` in kube-system);
- the queue directory Secret in the operator's namespace: get (`resourceNames`).
Callers need `external.metrics.k8s.io` resource `agentpool_queue_backlog` (or `*`): list
(the upstream `system:controller:horizontal-pod-autoscaler` role grants get/list/watch on `*`).
"""
