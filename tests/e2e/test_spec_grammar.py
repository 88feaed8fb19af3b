"""Property, against the real API server: every AgentPool it accepts, the operator builds
(no InvalidSpec), the runtime can load, and the API server accepts every child of.

Specs come from the CRD's whole grammar (tests/spec_grammar.py), hostile values included.
The API server is the judge of what is accepted (schema, CEL); children are sent with a
server-side dry run, so validation and defaulting run for real and nothing is left behind.
The only fields whose children the API server may refuse are the ones the CRD keeps
free-form (the Kubernetes shapes of env valueFrom, affinity, label selectors): those
refusals are reported as ApplyFailed (see test_operator_refusals.py).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings

from agent_runtime.config import parse_config
from agentpool_dev.cluster import Cluster
from agentpool_operator.api import AgentPoolSpec
from agentpool_operator.builders import PoolContext, SecretValues
from agentpool_operator.plan import plan_children
from tests.spec_grammar import FREE_FORM, hostile_specs, pool_names

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
DSN = "postgresql://app:pw@db.example:5432/agents?sslmode=require&application_name=grammar"


def _has_free_form_junk(spec: dict[str, Any]) -> bool:
    text = json.dumps(spec, sort_keys=True)
    return any(json.dumps(junk, sort_keys=True) in text
               for _, hostile in FREE_FORM.values() for junk in hostile)


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(name=pool_names, raw=hostile_specs())
def test_what_the_api_server_accepts_is_built_and_its_children_are_accepted(
        cluster: Cluster, agentpool_crd: dict[str, Any], namespace: str, name: str,
        raw: dict[str, Any]) -> None:
    pool = {"apiVersion": "agentpool.dev/v1alpha1", "kind": "AgentPool",
            "metadata": {"name": name, "namespace": namespace}, "spec": raw}
    created = cluster.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-",
                              input=json.dumps(pool), check=False)
    if created.returncode != 0:
        event("refused by the API server")
        return
    stored = json.loads(created.stdout)
    spec = AgentPoolSpec.model_validate(stored["spec"])  # what the operator reads back
    ctx = PoolContext(name=name, namespace=namespace, uid="5f0c3a4e-0000-4000-8000-000000000001",
                      spec=spec, secrets=SecretValues(redis_url="redis://r:6379/0",
                                                      database_dsn=DSN))
    children = plan_children(ctx)  # InvalidSpec here: the CRD accepted what cannot run
    assert parse_config(children.config_map["data"]["runtime.yaml"]).pool == name

    listed = {"apiVersion": "v1", "kind": "List", "items": list(children.manifests)}
    applied = cluster.kubectl("apply", "--server-side", "--dry-run=server",
                              "--field-manager=agentpool-operator", "-f", "-",
                              input=json.dumps(listed), check=False)
    if applied.returncode != 0:
        event("a child refused for a free-form field")
        assert _has_free_form_junk(raw), (
            f"the API server accepted the pool but refused a child:\n{applied.stderr}\n"
            f"{json.dumps(raw, indent=1)}")
        return
    event("built and every child accepted")
