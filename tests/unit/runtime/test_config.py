"""The config contract the operator renders and the runtime reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent_runtime.config import (
    ConfigError,
    RuntimeConfig,
    load_settings,
    parse_config,
    render_config,
)

MINIMAL: dict[str, object] = {"pool": "pool-a", "handler": "app.tasks:run"}
SECRETS = {"AGENTPOOL_REDIS_URL": "redis://:pw@127.0.0.1:6379/0"}


def _write(tmp_path: Path, data: object, name: str = "runtime.yaml") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data) if name.endswith(".json") else _yaml(data))
    return path


def _yaml(data: object) -> str:
    import yaml

    return str(yaml.safe_dump(data))


def test_settings_come_from_the_file_and_secrets_from_the_environment(tmp_path: Path) -> None:
    path = _write(tmp_path, {**MINIMAL, "workers": 3, "concurrency": 16})
    env = {**SECRETS, "AGENTPOOL_CONFIG": str(path), "AGENTPOOL_POD_NAME": "pool-a-0",
           "AGENTPOOL_DATABASE_URL": "postgresql://u:p@127.0.0.1:6432/db"}

    settings = load_settings(environ=env)

    assert (settings.config.workers, settings.config.concurrency) == (3, 16)
    assert settings.pod_name == "pool-a-0"
    assert settings.secrets.redis_url.get_secret_value() == SECRETS["AGENTPOOL_REDIS_URL"]
    assert settings.secrets.database_url is not None
    # Secrets never show up in reprs or logs.
    assert "pw" not in repr(settings)
    # The cache uses the queue's Redis unless told otherwise.
    assert settings.secrets.effective_cache_redis_url == SECRETS["AGENTPOOL_REDIS_URL"]


def test_a_secret_in_the_file_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, {**MINIMAL, "redis_url": "redis://x"})
    with pytest.raises(ConfigError, match="redis_url"):
        load_settings(environ={**SECRETS, "AGENTPOOL_CONFIG": str(path)})


@pytest.mark.parametrize(("env", "message"), [
    ({}, "AGENTPOOL_REDIS_URL is not set"),
    ({"AGENTPOOL_REDIS_URL": ""}, "AGENTPOOL_REDIS_URL is not set"),
])
def test_missing_secrets_are_named(tmp_path: Path, env: dict[str, str], message: str) -> None:
    path = _write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError, match=message):
        load_settings(environ={**env, "AGENTPOOL_CONFIG": str(path)})


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="AGENTPOOL_CONFIG"):
        load_settings(environ=SECRETS)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "absent.yaml", environ=SECRETS)


@pytest.mark.parametrize(("change", "message"), [
    ({"handler": "not-a-ref"}, "module:function"),
    ({"handlers": {"x": "a.b"}}, "handler 'x'"),
    ({"pool": "Bad_Name"}, "RFC 1035 label"),
    ({"pool": "1st-pool"}, "starting with a letter"),
    ({"pool": "a.b"}, "RFC 1035 label"),
    ({"handler": "app:tasks:run"}, "module:function"),
    ({"workers": 0}, "workers"),
    ({"unknown_setting": 1}, "unknown_setting"),
    ({"memory_breaker_close_ratio": 0.95}, "close_ratio"),
])
def test_invalid_settings_are_rejected_with_the_field(change: dict[str, object],
                                                      message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(json.dumps({**MINIMAL, **change}))


def test_rendered_config_round_trips() -> None:
    config = RuntimeConfig.model_validate(
        {**MINIMAL, "workers": 4, "lease_seconds": 45, "handlers": {"b": "app.b:run"}})
    assert parse_config(render_config(config)) == config
    # Only what differs from the defaults is written.
    assert set(json.loads(render_config(config))) == {"pool", "handler", "workers",
                                                      "lease_seconds", "handlers"}


def test_config_is_frozen() -> None:
    config = RuntimeConfig.model_validate(MINIMAL)
    with pytest.raises(ValueError, match="frozen"):
        setattr(config, "workers", 9)  # noqa: B010 - the assignment mypy would refuse


def test_derived_keys_share_the_pools_hash_tag() -> None:
    config = RuntimeConfig.model_validate(MINIMAL)
    assert config.stream_key == "agentpool:{pool-a}:tasks"
    assert config.dead_letter_key == "agentpool:{pool-a}:dead"
    assert config.handler_map == {"default": "app.tasks:run"}
    assert RuntimeConfig.model_validate({**MINIMAL, "stream": "custom"}).stream_key == "custom"
    assert config.effective_db_pool_max_size == config.concurrency


def test_every_field_is_documented() -> None:
    undocumented = [name for name, field in RuntimeConfig.model_fields.items()
                    if not field.description]
    assert undocumented == []


def test_config_module_imports_without_io_libraries() -> None:
    # The operator imports it to render configs; it must not drag in the runtime's clients.
    code = ("import sys, agent_runtime.config; "
            "print(sorted(m for m in ('redis', 'asyncpg', 'aiohttp', 'prometheus_client') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_same_named_pools_in_different_namespaces_never_share_keys() -> None:
    base = {"pool": "echo", "handler": "m:f"}
    a = RuntimeConfig.model_validate({**base, "namespace": "team-a"})
    b = RuntimeConfig.model_validate({**base, "namespace": "team-b"})
    assert a.stream_key == "agentpool:{team-a/echo}:tasks"
    assert len({a.stream_key, b.stream_key}) == 2
    assert a.dead_letter_key != b.dead_letter_key
