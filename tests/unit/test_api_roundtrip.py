"""Property: every valid spec parses, round-trips unchanged, and defaults like the CRD.

The same strategy feeds the e2e test that sends specs to the real API server; here the
API server's defaulting is modelled by `apply_defaults` over the generated schema.
"""

from __future__ import annotations

import copy
from typing import Any

from agentpool_tools.crd import openapi_schema
from hypothesis import given, settings

from agentpool_operator.api import AgentPoolSpec, parse_quantity
from tests.plugins.crd import agentpool_specs, apply_defaults

SPEC_SCHEMA = openapi_schema()["properties"]["spec"]


@settings(max_examples=200, deadline=None)
@given(agentpool_specs())
def test_valid_specs_round_trip_and_default_like_the_crd(spec: dict[str, Any]) -> None:
    model = AgentPoolSpec.model_validate(spec)
    dumped = model.to_json()
    assert AgentPoolSpec.model_validate(dumped) == model
    # What the API server stores (schema defaults applied) is exactly the model's dump.
    assert apply_defaults(copy.deepcopy(spec), SPEC_SCHEMA) == dumped


@settings(max_examples=200, deadline=None)
@given(agentpool_specs())
def test_generated_specs_honour_the_cross_field_rules(spec: dict[str, Any]) -> None:
    # Guards the strategy itself: the e2e test expects the API server to accept all of them.
    s = AgentPoolSpec.model_validate(spec)
    assert s.min_replicas <= s.replicas <= s.max_replicas
    assert s.workers.drain_grace_period_seconds >= s.workers.task_timeout_seconds
    assert not s.autoscaling.enabled or s.min_replicas >= 1
    if s.database is not None:
        pgb = s.database.pgbouncer
        assert s.max_replicas * pgb.default_pool_size <= s.database.connection_budget
        assert pgb.max_client_connections >= s.workers.per_pod * s.workers.concurrency
    limits, requests = s.resources.limits or {}, s.resources.requests or {}
    if s.workers.max_memory_per_worker is not None and "memory" in limits:
        assert parse_quantity(s.workers.max_memory_per_worker) < parse_quantity(limits["memory"])
    for name in set(limits) & set(requests):
        assert parse_quantity(requests[name]) <= parse_quantity(limits[name])
