"""The real-services harness works: every service answers, and restarts are real."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import Iterator

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter, start_http_server

from agentpool_dev import services as svc
from agentpool_dev.services import ServiceSettings
from tests.waiting import eventually_async

pytestmark = pytest.mark.services


async def test_postgres_answers_as_the_agentpool_user(postgres_dsn: str) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        row = await conn.fetchrow("SELECT current_user, current_database(), $1::int + 1 AS n", 41)
    finally:
        await conn.close()
    assert row is not None
    assert tuple(row) == ("agentpool", "agentpool", 42)


async def test_pgbouncer_pools_transactions(services: ServiceSettings) -> None:
    clients = 30  # more than default_pool_size (20): they must share server connections
    conns = [
        await asyncpg.connect(services.pgbouncer_dsn, **services.pgbouncer_asyncpg_kwargs)
        for _ in range(clients)
    ]

    async def work(conn: asyncpg.Connection, n: int) -> int:
        total = 0
        for i in range(3):
            async with conn.transaction():
                await conn.execute("SELECT pg_sleep(0.02)")
                total += await conn.fetchval("SELECT $1::int + $2::int", n, i)
        return total

    try:
        totals = await asyncio.gather(*(work(conn, n) for n, conn in enumerate(conns)))
        if svc.pgbouncer_supports_prepared_statements():
            # Named statements outlive transactions: PgBouncer re-prepares them per server.
            stmt = await conns[0].prepare("SELECT $1::int * 2")
            assert [await stmt.fetchval(i) for i in range(5)] == [0, 2, 4, 6, 8]
    finally:
        await asyncio.gather(*(conn.close() for conn in conns))

    assert totals == [3 * n + 3 for n in range(clients)]
    pool = next(p for p in svc.pgbouncer_show(services, "POOLS") if p["database"] == "agentpool")
    assert pool["pool_mode"] == "transaction"
    servers = sum(int(pool[key]) for key in ("sv_active", "sv_idle", "sv_used", "sv_tested"))
    assert 0 < servers <= 20


async def test_redis_set_get(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        key = f"test:{uuid.uuid4().hex}"
        await client.set(key, "value", ex=60)
        assert await client.get(key) == b"value"
    finally:
        await client.aclose()


@pytest.fixture
def metrics_target(services: ServiceSettings) -> Iterator[str]:
    """A prometheus_client endpoint on a free loopback port, registered via file_sd."""
    registry = CollectorRegistry()
    Counter("agentpool_harness_probe", "Proves the harness scrapes.", registry=registry).inc()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    job = f"harness-{uuid.uuid4().hex[:8]}"
    target_file = services.prometheus_targets_dir / f"{job}.json"
    # Written aside and renamed: Prometheus must never read a half-written file.
    staging = target_file.with_suffix(".tmp")
    staging.write_text(
        json.dumps([{"targets": [f"127.0.0.1:{server.server_port}"], "labels": {"job": job}}])
    )
    staging.rename(target_file)
    try:
        yield job
    finally:
        target_file.unlink()
        server.shutdown()
        server.server_close()
        thread.join()


async def test_prometheus_scrapes_a_file_sd_target(
    services: ServiceSettings, metrics_target: str
) -> None:
    async with aiohttp.ClientSession(services.prometheus_url) as http:

        async def value(query: str) -> str | None:
            async with http.get("/api/v1/query", params={"query": query}) as resp:
                body = await resp.json()
            assert body["status"] == "success", body
            results = body["data"]["result"]
            return str(results[0]["value"][1]) if results else None

        async def up() -> bool:
            return await value(f'up{{job="{metrics_target}"}}') == "1"

        await eventually_async(up, within=30)
        probe = f'agentpool_harness_probe_total{{job="{metrics_target}"}}'
        assert await value(probe) == "1"


def test_promtool_accepts_the_prometheus_config(services: ServiceSettings) -> None:
    done = subprocess.run(
        [services.promtool, "check", "config", services.prometheus_config],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


async def test_restart_redis_is_a_real_restart(services: ServiceSettings) -> None:
    async def server_info() -> tuple[str, int]:
        client = aioredis.Redis.from_url(services.redis_url)
        try:
            info = await client.info("server")
            await client.set("harness:survives-restart", "no")
        finally:
            await client.aclose()
        return str(info["run_id"]), int(info["process_id"])

    before = await server_info()
    svc.restart_redis(services)
    client = aioredis.Redis.from_url(services.redis_url)
    try:
        # Nothing persisted: a restarted Redis starts empty.
        assert await client.get("harness:survives-restart") is None
    finally:
        await client.aclose()
    after = await server_info()
    assert after[0] != before[0]
    assert after[1] != before[1]


async def test_restart_pgbouncer_leaves_queries_working(services: ServiceSettings) -> None:
    old_pid = svc.pids(services)["pgbouncer"]
    svc.restart_pgbouncer(services)
    assert svc.pids(services)["pgbouncer"] not in (None, old_pid)
    conn = await asyncpg.connect(services.pgbouncer_dsn, **services.pgbouncer_asyncpg_kwargs)
    try:
        assert await conn.fetchval("SELECT $1::text", "after restart") == "after restart"
    finally:
        await conn.close()


async def test_restart_postgres_behind_pgbouncer(services: ServiceSettings) -> None:
    direct = await asyncpg.connect(services.postgres_dsn)
    old_backend = await direct.fetchval("SELECT pg_postmaster_start_time()")
    svc.restart_postgres(services)
    with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
        await direct.fetchval("SELECT 1")
    await direct.close()

    direct = await asyncpg.connect(services.postgres_dsn)
    try:
        assert await direct.fetchval("SELECT pg_postmaster_start_time()") > old_backend
    finally:
        await direct.close()
    # PgBouncer drops its dead server connections and opens new ones.
    pooled = await asyncpg.connect(services.pgbouncer_dsn, **services.pgbouncer_asyncpg_kwargs)
    try:
        assert await pooled.fetchval("SELECT 1") == 1
    finally:
        await pooled.close()


def test_up_is_idempotent(services: ServiceSettings) -> None:
    before = svc.pids(services)
    assert svc.up(services) == services
    assert svc.pids(services) == before
    assert all(svc.status(services).values())


def test_a_nested_session_leaves_shared_services_running(services: ServiceSettings) -> None:
    before = svc.pids(services)
    with svc.session(services):
        pass
    assert svc.pids(services) == before
    assert all(svc.status(services).values())


def test_cli_status_and_env(services: ServiceSettings, capsys: pytest.CaptureFixture[str]) -> None:
    assert svc.main(["status"]) == 0
    assert svc.main(["env"]) == 0
    exports = capsys.readouterr().out.splitlines()
    assert f"export AGENTPOOL_REDIS_URL={services.redis_url}" in exports
    assert any(line.startswith("export AGENTPOOL_DATABASE_URL=postgresql://") for line in exports)
    assert {line.split("=")[0] for line in exports if line.startswith("export")} == {
        "export AGENTPOOL_REDIS_URL",
        "export AGENTPOOL_DATABASE_URL",
        "export AGENTPOOL_PGBOUNCER_URL",
        "export AGENTPOOL_PROMETHEUS_URL",
    }
