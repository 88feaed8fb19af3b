"""agentpool-metrics-apiserver: queue-length autoscaling for AgentPools, out of the box.

A small aggregated API server, shipped with the operator package and run as its own
Deployment (`python -m agentpool_operator.metrics_api`). It serves
`external.metrics.k8s.io/v1beta1` through an APIService, so the HPA the operator renders for
each autoscaled pool (`builders/hpa.py`: External metric `agentpool_queue_backlog`, selector
`agentpool.dev/pool=<pool>`) gets the pool's waiting + in-flight tasks straight from Redis,
with no Prometheus or adapter in the scaling path. It also keeps
`controller.kubernetes.io/pod-deletion-cost` on pool pods current, so scale-down removes idle
pods first, and exports the queue gauges on `/metrics` (for dashboards and, on clusters
that already run prometheus-adapter, for its rules in `adapter_rules.py`).

Modules: `server` (HTTPS app), `auth` (delegated authentication and authorisation), `tls`,
`selector` (label selectors), `pools` (pool -> Redis URL and keys), `backlog` (Redis reads),
`podcost` (deletion costs and gauges), `telemetry`, `kube` (the only API caller).

RBAC it needs (ClusterRole unless noted):
- `authentication.k8s.io` tokenreviews: create; `authorization.k8s.io` subjectaccessreviews:
  create (the upstream ClusterRole `system:auth-delegator` has exactly these);
- configmaps `extension-apiserver-authentication` in kube-system: get (Role binding to the
  upstream `extension-apiserver-authentication-reader` in kube-system);
- `agentpool.dev` agentpools: get, list;
- secrets: get (only the Secrets that AgentPools reference for their Redis URL);
- pods: list, patch (the deletion-cost annotation).
Callers need `external.metrics.k8s.io` resource `agentpool_queue_backlog` (or `*`): list
(the upstream `system:controller:horizontal-pod-autoscaler` role grants get/list/watch on `*`).
"""
