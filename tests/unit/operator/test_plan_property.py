"""Property: whatever AgentPool the operator reads, it either builds children the runtime can
run or reports why not (InvalidSpec, InvalidDatabaseDSN); nothing raises.

Specs come from the CRD's whole grammar (tests/spec_grammar.py), hostile values included;
the e2e twin (tests/e2e/test_spec_grammar.py) adds the real API server's judgement.
"""

from __future__ import annotations

import re
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agent_runtime.config import parse_config
from agentpool_operator.api import AgentPoolSpec
from agentpool_operator.builders import InvalidDatabaseDsn, PoolContext, SecretValues
from agentpool_operator.plan import InvalidSpec, plan_children
from tests.spec_grammar import dsns, hostile_specs, pool_names

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
RFC1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
namespaces = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True)


def check_children_are_well_formed(children: Any, name: str) -> None:
    """What the API server and the runtime would check first, in Python."""
    for manifest in children.manifests:
        meta = manifest["metadata"]
        assert len(meta["name"]) <= 253
        for value in meta["labels"].values():
            assert len(value) <= 63
    assert RFC1035.match(children.service["metadata"]["name"])
    assert len(children.service["metadata"]["name"]) <= 63
    # The runtime's own loader accepts the file the operator renders for it.
    config = parse_config(children.config_map["data"]["runtime.yaml"])
    assert config.pool == name


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.filter_too_much])
@given(name=pool_names, namespace=namespaces, raw=hostile_specs(), dsn=dsns)
def test_every_spec_builds_or_is_reported_and_nothing_raises(
        name: str, namespace: str, raw: dict[str, Any], dsn: str) -> None:
    try:
        spec = AgentPoolSpec.model_validate(raw)
    except ValidationError:
        event("refused by the model")
        return  # reported as InvalidSpec with the fields' messages (reconcile.py)
    ctx = PoolContext(name=name, namespace=namespace, uid="00000000-0000-0000-0000-000000000001",
                      spec=spec, secrets=SecretValues(redis_url="redis://r:6379/0",
                                                      database_dsn=dsn),
                      pod_monitor_api=True, keda_api=True)
    try:
        children = plan_children(ctx)
    except InvalidDatabaseDsn as error:
        event("InvalidDatabaseDSN")
        assert "pw" not in str(error)  # noqa: PT017 - the message must not quote the DSN
        return
    except InvalidSpec as error:
        event("InvalidSpec")
        # Reported to the user; a builder bug would say so and fail here.
        assert "operator bug" not in str(error), str(error)  # noqa: PT017
        return
    event("built")
    check_children_are_well_formed(children, name)
