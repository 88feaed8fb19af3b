"""`autoscaling.provider: keda`: a KEDA ScaledObject (and its auth) instead of the HPA."""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

import pytest

from agentpool_operator.builders import (
    PoolContext,
    build_children,
    build_hpa,
    build_keda_secret,
    build_scaled_object,
    build_trigger_authentication,
)
from agentpool_operator.builders.hpa import behavior
from agentpool_operator.builders.scaledobject import RedisTarget, redis_target
from tests.unit.operator.builder_samples import full_ctx, minimal_ctx

KEDA = {"autoscaling": {"provider": "keda"}}


def keda_ctx(overrides: dict[str, Any] | None = None, **secrets: str) -> PoolContext:
    ctx = full_ctx({**KEDA, **(overrides or {})})
    if secrets:
        ctx = dataclasses.replace(ctx, secrets=dataclasses.replace(ctx.secrets, **secrets))
    return dataclasses.replace(ctx, keda_api=True)


def kinds(ctx: PoolContext) -> list[str]:
    return [m["kind"] for m in build_children(ctx).manifests]


def test_builtin_is_the_default_and_renders_the_hpa() -> None:
    ctx = dataclasses.replace(full_ctx(), keda_api=True)
    assert ctx.spec.autoscaling.provider == "builtin"
    assert "HorizontalPodAutoscaler" in kinds(ctx)
    assert build_scaled_object(ctx) is None
    assert build_trigger_authentication(ctx) is None
    assert build_keda_secret(ctx) is None


def test_keda_without_its_crds_falls_back_to_the_hpa() -> None:
    ctx = full_ctx(KEDA)
    assert not ctx.keda_api
    assert build_hpa(ctx) is not None
    assert "ScaledObject" not in kinds(ctx)


def test_keda_replaces_the_hpa_and_comes_last_with_its_auth() -> None:
    ctx = keda_ctx()
    assert build_hpa(ctx) is None
    assert kinds(ctx)[-4:] == ["Secret", "TriggerAuthentication", "ScaledObject", "PodMonitor"]
    assert "HorizontalPodAutoscaler" not in kinds(ctx)


def test_no_keda_objects_without_autoscaling() -> None:
    ctx = keda_ctx({"autoscaling": {"enabled": False}})
    assert not ctx.uses_keda
    assert "ScaledObject" not in kinds(ctx)
    assert build_hpa(ctx) is None


def test_the_scaled_object_scales_the_agentpool_on_its_stream() -> None:
    ctx = keda_ctx()
    scaled = build_scaled_object(ctx)
    assert scaled is not None
    assert (scaled["apiVersion"], scaled["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    assert scaled["metadata"]["name"] == "research"
    assert scaled["metadata"]["ownerReferences"][0]["kind"] == "AgentPool"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "agentpool.dev/v1alpha1",
                                      "kind": "AgentPool", "name": "research"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 20)
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == behavior(
        ctx.spec.autoscaling)
    assert spec["triggers"] == [{
        "type": "redis-streams",
        "name": "queue-backlog",
        # Stream-length mode: no consumer group, XLEN = waiting + in flight for this runtime.
        "metadata": {"stream": "research:tasks", "streamLength": "8", "databaseIndex": "0",
                     "enableTLS": "false"},
        "authenticationRef": {"name": "research-keda"},
    }]


def test_the_default_stream_is_the_one_the_runtime_derives() -> None:
    ctx = dataclasses.replace(minimal_ctx({"autoscaling": {"enabled": True, "provider": "keda"}}),
                              keda_api=True)
    scaled = build_scaled_object(ctx)
    assert scaled is not None
    metadata = scaled["spec"]["triggers"][0]["metadata"]
    assert (metadata["stream"], metadata["streamLength"]) == ("agentpool:{agents/echo}:tasks", "2")
    assert scaled["spec"]["minReplicaCount"] == 1


def test_credentials_live_only_in_the_derived_secret() -> None:
    ctx = keda_ctx(redis_url="rediss://queue-user:p%40ss@redis.data.svc:6380/3")
    secret = build_keda_secret(ctx)
    assert secret is not None
    assert secret["metadata"]["name"] == "research-keda"
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {"address": "redis.data.svc:6380", "username": "queue-user",
                       "password": "p@ss"}
    auth = build_trigger_authentication(ctx)
    assert auth is not None
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": key, "name": "research-keda", "key": key}
        for key in ("address", "username", "password")]
    scaled = build_scaled_object(ctx)
    assert scaled is not None
    assert scaled["spec"]["triggers"][0]["metadata"]["enableTLS"] == "true"
    assert scaled["spec"]["triggers"][0]["metadata"]["databaseIndex"] == "3"
    for manifest in (auth, scaled):
        assert "p@ss" not in json.dumps(manifest)
        assert "p%40ss" not in json.dumps(manifest)


def test_a_url_without_credentials_maps_only_the_address() -> None:
    ctx = keda_ctx(redis_url="redis://redis.data.svc")
    auth = build_trigger_authentication(ctx)
    secret = build_keda_secret(ctx)
    assert auth is not None
    assert secret is not None
    assert [ref["parameter"] for ref in auth["spec"]["secretTargetRef"]] == ["address"]
    assert list(secret["data"]) == ["address"]


@pytest.mark.parametrize(("url", "target"), [
    ("redis://:pw@10.0.0.5:6379/0", RedisTarget("10.0.0.5:6379", "", "pw", 0, False)),
    ("redis://[fd00::5]:7000/2", RedisTarget("[fd00::5]:7000", "", "", 2, False)),
    ("rediss://u:p@host/", RedisTarget("host:6379", "u", "p", 0, True)),
    ("redis://host:notaport/x", RedisTarget("host:6379", "", "", 0, False)),
])
def test_redis_urls_are_taken_apart_for_keda(url: str, target: RedisTarget) -> None:
    assert redis_target(url) == target

