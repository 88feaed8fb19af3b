"""Property: the real API server accepts every generated valid spec, and the models
round-trip what it stores unchanged (its defaults are the models' defaults)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from agentpool_dev.cluster import Cluster
from agentpool_operator.api import AgentPoolSpec
from tests.plugins.crd import agentpool_specs

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=agentpool_specs())
def test_valid_specs_are_accepted_and_round_trip(
    cluster: Cluster, agentpool_crd: dict[str, Any], spec: dict[str, Any]
) -> None:
    manifest = {"apiVersion": "agentpool.dev/v1alpha1", "kind": "AgentPool",
                "metadata": {"name": "generated", "namespace": "default"}, "spec": spec}
    # A server-side dry run goes through defaulting, schema and CEL validation, and returns
    # the object as it would be stored, without leaving anything behind between examples.
    result = cluster.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-",
                             input=json.dumps(manifest), check=False)
    assert result.returncode == 0, f"{result.stderr}\n{json.dumps(spec, indent=1)}"
    stored = json.loads(result.stdout)["spec"]
    model = AgentPoolSpec.model_validate(spec)
    assert stored == model.to_json()
    assert AgentPoolSpec.model_validate(stored) == model
