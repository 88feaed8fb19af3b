"""pytest fixtures for the real PostgreSQL, PgBouncer, Redis and Prometheus.

`services` brings them up once per test session (see `agentpool_dev.services`). Services that
were already running, e.g. from `python -m agentpool_dev services up`, are used and left
running; the ones the session started are stopped at its end.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agentpool_dev.services import ServiceError, ServiceSettings, session


@pytest.fixture(scope="session")
def services() -> Iterator[ServiceSettings]:
    try:
        with session(ServiceSettings.from_env()) as settings:
            yield settings
    except ServiceError as exc:
        # Fail rather than skip: CI must never pass by silently not testing.
        pytest.fail(f"test services unavailable: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def redis_url(services: ServiceSettings) -> str:
    return services.redis_url


@pytest.fixture(scope="session")
def postgres_dsn(services: ServiceSettings) -> str:
    return services.postgres_dsn


@pytest.fixture(scope="session")
def pgbouncer_dsn(services: ServiceSettings) -> str:
    return services.pgbouncer_dsn
