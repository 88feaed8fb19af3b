"""The pod template's config hash: what rolls the pool, and what must not."""

from __future__ import annotations

import dataclasses
import re

from agentpool_operator.builders import (
    CONFIG_HASH_ANNOTATION,
    SecretValues,
    build_deployment,
    config_hash,
)
from tests.unit.operator.builder_samples import (
    FULL_SECRETS,
    MINIMAL_SECRETS,
    full_ctx,
    minimal_ctx,
)


def test_hash_is_16_hex_digits_on_the_pod_template() -> None:
    ctx = full_ctx()
    digest = config_hash(ctx)
    assert re.fullmatch(r"[0-9a-f]{16}", digest)
    annotations = build_deployment(ctx)["spec"]["template"]["metadata"]["annotations"]
    assert annotations[CONFIG_HASH_ANNOTATION] == digest
    assert annotations["example.com/owner"] == "research-platform"


def test_database_secret_change_rolls_the_pool() -> None:
    rotated = dataclasses.replace(
        FULL_SECRETS, database_dsn="postgresql://agents:rotated@postgres.data.svc:5432/agents"
    )
    assert config_hash(full_ctx(secrets=rotated)) != config_hash(full_ctx())


def test_redis_url_change_rolls_the_pool() -> None:
    moved = SecretValues(redis_url="redis://:new@redis:6379/0")
    assert config_hash(minimal_ctx(secrets=moved)) != config_hash(minimal_ctx())


def test_cache_redis_url_change_rolls_the_pool() -> None:
    moved = dataclasses.replace(FULL_SECRETS, cache_redis_url="redis://:new@cache:6379/1")
    assert config_hash(full_ctx(secrets=moved)) != config_hash(full_ctx())


def test_config_change_rolls_the_pool() -> None:
    assert config_hash(full_ctx({"workers": {"concurrency": 4}})) != config_hash(full_ctx())


def test_replicas_do_not_roll_the_pool() -> None:
    assert config_hash(full_ctx({"replicas": 7})) == config_hash(full_ctx())
    assert config_hash(minimal_ctx({"replicas": 0})) == config_hash(minimal_ctx())


def test_autoscaling_bounds_do_not_roll_the_pool() -> None:
    changed = full_ctx({"minReplicas": 3, "maxReplicas": 15, "autoscaling": {"enabled": False}})
    assert config_hash(changed) == config_hash(full_ctx())


def test_unused_secret_values_do_not_roll_the_pool() -> None:
    # Without a database or a separate cache Redis, those values are not in the pods.
    extra = dataclasses.replace(
        MINIMAL_SECRETS,
        database_dsn=FULL_SECRETS.database_dsn,
        cache_redis_url=FULL_SECRETS.cache_redis_url,
    )
    assert config_hash(minimal_ctx(secrets=extra)) == config_hash(minimal_ctx())


def test_hash_is_stable_across_calls() -> None:
    assert config_hash(full_ctx()) == config_hash(full_ctx())
