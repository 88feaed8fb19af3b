"""Reading the runtime's configuration: the only module that reads the environment.

The operator renders a YAML/JSON file (a ConfigMap mounted into the pod) with the non-secret
settings of `contract.RuntimeConfig` and points `$AGENTPOOL_CONFIG` at it; secrets arrive only
as environment variables (from a Secret). The operator renders that file with `render_config`,
so this module stays pure of the runtime's I/O libraries: pydantic, PyYAML and the standard
library, no redis/asyncpg, no import-time side effects.

Environment variables read here (and nowhere else in the runtime):

* `AGENTPOOL_CONFIG` - path of the rendered config file (required for `load_settings()` unless a
  path is passed explicitly).
* `AGENTPOOL_REDIS_URL` - secret, required: the queue's Redis (`redis://[:password@]host:port/db`).
* `AGENTPOOL_DATABASE_URL` - secret, optional: PostgreSQL DSN, in the pod the PgBouncer sidecar on
  localhost (transaction pooling). Without it, results live in Redis only.
* `AGENTPOOL_CACHE_REDIS_URL` - secret, optional: a separate Redis for the cache helper; defaults to
  the queue's Redis.
* `AGENTPOOL_POD_NAME` (downward API; falls back to `HOSTNAME`) - this pod's identity, used to name
  Redis consumers. Not a secret, but per pod, so it cannot live in the shared file.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, SecretStr

# The model and the variable names are the operator↔runtime contract; re-exported here for
# the runtime's modules, which read them through this module.
from agent_runtime.contract import (
    CACHE_REDIS_URL_ENV as CACHE_REDIS_URL_ENV,
)
from agent_runtime.contract import (
    CONFIG_PATH_ENV as CONFIG_PATH_ENV,
)
from agent_runtime.contract import (
    DATABASE_URL_ENV as DATABASE_URL_ENV,
)
from agent_runtime.contract import (
    PGBOUNCER_STATS_URL_ENV as PGBOUNCER_STATS_URL_ENV,
)
from agent_runtime.contract import (
    POD_NAME_ENV as POD_NAME_ENV,
)
from agent_runtime.contract import (
    REDIS_URL_ENV as REDIS_URL_ENV,
)
from agent_runtime.contract import BudgetKeyConfig, budget_api_key_env
from agent_runtime.contract import (
    RuntimeConfig as RuntimeConfig,
)


class ConfigError(ValueError):
    """The configuration file or environment is missing or invalid (the message says which)."""


class RuntimeSecrets(BaseModel):
    """Connection strings, taken only from the environment (never from the config file)."""

    model_config = ConfigDict(frozen=True)

    redis_url: SecretStr
    database_url: SecretStr | None = None
    cache_redis_url: SecretStr | None = None
    pgbouncer_stats_url: SecretStr | None = None
    budget_api_keys: dict[str, SecretStr] = {}
    """Budget key name -> the provider's API key (from the AgentBudget's Secret)."""

    @property
    def effective_cache_redis_url(self) -> str:
        url = self.cache_redis_url or self.redis_url
        return url.get_secret_value()


class RuntimeSettings(BaseModel):
    """Everything a runtime process needs: the file, the secrets, and who this pod is."""

    model_config = ConfigDict(frozen=True)

    config: RuntimeConfig
    secrets: RuntimeSecrets
    pod_name: str


def parse_config(text: str) -> RuntimeConfig:
    """Parse the rendered file (YAML, of which JSON is a subset) into a validated config."""
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config is not valid YAML/JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError("config must be a mapping of settings")
    try:
        return RuntimeConfig.model_validate(data)
    except ValueError as exc:
        raise ConfigError(f"invalid runtime config: {exc}") from exc


def render_config(config: RuntimeConfig) -> str:
    """The file the operator writes: stable JSON (valid YAML), only non-default fields kept."""
    return json.dumps(config.model_dump(mode="json", exclude_defaults=True), indent=2,
                      sort_keys=True) + "\n"


def secrets_from_env(environ: Mapping[str, str],
                     budgets: tuple[BudgetKeyConfig, ...] = ()) -> RuntimeSecrets:
    redis_url = environ.get(REDIS_URL_ENV)
    if not redis_url:
        raise ConfigError(f"{REDIS_URL_ENV} is not set")
    database_url = environ.get(DATABASE_URL_ENV) or None
    cache_url = environ.get(CACHE_REDIS_URL_ENV) or None
    stats_url = environ.get(PGBOUNCER_STATS_URL_ENV) or None
    return RuntimeSecrets(
        redis_url=SecretStr(redis_url),
        database_url=SecretStr(database_url) if database_url else None,
        cache_redis_url=SecretStr(cache_url) if cache_url else None,
        pgbouncer_stats_url=SecretStr(stats_url) if stats_url else None,
        budget_api_keys={key.name: SecretStr(environ[budget_api_key_env(key.name)])
                         for key in budgets
                         if key.has_api_key and environ.get(budget_api_key_env(key.name))},
    )


def load_config(path: str | Path | None = None,
                environ: Mapping[str, str] | None = None) -> RuntimeConfig:
    """Read the config file from `path`, else from `$AGENTPOOL_CONFIG`."""
    env = os.environ if environ is None else environ
    location = path or env.get(CONFIG_PATH_ENV)
    if not location:
        raise ConfigError(f"no config file: pass --config or set {CONFIG_PATH_ENV}")
    try:
        text = Path(location).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {location}: {exc}") from exc
    return parse_config(text)


def load_settings(path: str | Path | None = None,
                  environ: Mapping[str, str] | None = None) -> RuntimeSettings:
    """Everything the runtime reads from outside the process, read once at start-up."""
    env = os.environ if environ is None else environ
    pod_name = env.get(POD_NAME_ENV) or env.get("HOSTNAME") or socket.gethostname()
    config = load_config(path, env)
    return RuntimeSettings(
        config=config, secrets=secrets_from_env(env, config.budgets), pod_name=pod_name
    )
