"""The metrics API server reads the keys the pool's pods really use.

The pods read `runtime.yaml` from the ConfigMap the operator renders and derive their Redis
keys with `agent_runtime.queue.keys.Keys`; `agentpool_operator.queues.queue_keys` (what the operator
publishes for the metrics API and reads for deletion costs) must land on the same stream,
group and retry set for any spec. (The consumer-name half of the contract is tested
against a real supervisor in tests/integration/test_metrics_backlog.py.)
"""

from __future__ import annotations

import pytest

from agent_runtime.config import parse_config
from agent_runtime.queue.keys import Keys
from agentpool_operator.builders import PoolContext, build_config_map
from agentpool_operator.builders.config import RUNTIME_CONFIG_KEY
from agentpool_operator.queues import queue_keys
from tests.unit.operator.builder_samples import full_ctx, minimal_ctx


@pytest.mark.parametrize("ctx", [minimal_ctx(), full_ctx()], ids=["minimal", "full"])
def test_keys_match_what_the_pods_derive_from_their_config_file(ctx: PoolContext) -> None:
    rendered = build_config_map(ctx)["data"][RUNTIME_CONFIG_KEY]
    pods = Keys.for_config(parse_config(rendered))
    ours = queue_keys(ctx.name, ctx.namespace, ctx.spec)
    assert (ours.stream, ours.group, ours.delayed) == (pods.stream, pods.group, pods.delayed)


def test_custom_and_default_streams() -> None:
    assert (queue_keys("research", "agents", full_ctx().spec).stream,
            queue_keys("research", "agents", full_ctx().spec).group) == (
        "research:tasks", "research-workers")
    echo = queue_keys("echo", "agents", minimal_ctx().spec)
    assert (echo.stream, echo.group, echo.delayed) == (
        "agentpool:{agents/echo}:tasks", "workers", "agentpool:{agents/echo}:delayed")
