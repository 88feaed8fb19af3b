"""The PgBouncer config the operator renders works against a real PgBouncer: the stats user
(the runtime reading PgBouncer's metrics) reads every SHOW command pgbouncer_exporter v0.11 runs
and nothing else, the runtime's reader turns them into the exporter's metrics, and the pool's
own database user still gets through to PostgreSQL.

What runs is exactly what the operator puts in the ConfigMap and the derived Secret for a pool
whose database is the test PostgreSQL (`build_children`, as the builder unit tests call it),
with only the machine-specific lines rewritten (see `_localized_ini`). PgBouncer is the Debian
binary the services harness uses, started per module on a free loopback port.

Clients. PgBouncer's admin console speaks only the simple query protocol, as the exporter's
driver (lib/pq) does for queries without parameters:

* psql (libpq, `-c`, simple protocol) reads the rows of the SHOW commands, given the exporter's
  connection string as rendered (only host and port rewritten).
* asyncpg cannot read them: its fetch* methods use the extended protocol (Parse/Bind), which
  the console refuses; its argument-less `execute` uses the simple protocol but discards the
  rows. It is used for what psql cannot do: log in with the startup parameters lib/pq sends
  (`extra_float_digits`, which PgBouncer rejects unless `ignore_startup_parameters` lists it,
  `client_encoding`, `datestyle`), so the exporter's own login is what is checked.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import os
import pwd
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from agent_runtime.supervisor.pgbouncer_metrics import PgBouncerMetrics
from agentpool_dev import services as svc
from agentpool_dev.procs import free_port
from agentpool_dev.services import ServiceSettings
from agentpool_operator.builders import build_children
from tests.unit.operator.builder_samples import FULL_SECRETS, full_ctx

pytestmark = pytest.mark.services

STATS_USER = "agentpool_stats"
# What the pod's PgBouncer listens on (builders/secret.py); rewritten to a free port here.
POD_HOST, POD_PORT = "127.0.0.1", 6432
POD_SECRET_DIR = "/etc/pgbouncer/secret"
PREPARED_STATEMENTS_LINE = "max_prepared_statements = 200"
# lib/pq's startup parameters besides user and database (pq.NewConnector's defaults).
LIB_PQ_STARTUP = {"extra_float_digits": "2", "client_encoding": "UTF8", "DateStyle": "ISO, MDY"}
# The exporter's queries (collector.go): getDB's ping, queryVersion, queryShowLists,
# queryShowConfig and one `SHOW <namespace>` per metric map (databases, pools and stats; newer
# releases read stats_totals instead, so both are checked).
EXPORTER_QUERIES = ("STATS", "VERSION", "LISTS", "CONFIG", "DATABASES", "POOLS", "STATS_TOTALS")
# Admin commands a stats user must be refused (SHUTDOWN last: if it were allowed, it would stop
# the PgBouncer the other tests use, and they would fail too).
ADMIN_COMMANDS = ("PAUSE", "RESUME", "RELOAD", "DISABLE agentpool", "KILL agentpool",
                  "SET default_pool_size = 1", "SHUTDOWN")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Rendered:
    """What the operator writes for the pool: pgbouncer.ini (ConfigMap) and the Secret's keys."""

    ini: str
    userlist: str
    databases_ini: str
    database_url: str
    exporter_url: str
    default_pool_size: int
    max_client_conn: int


@dataclasses.dataclass(frozen=True)
class Bouncer:
    port: int
    log: Path
    process: subprocess.Popen[bytes]

    def url(self, rendered_url: str) -> str:
        """A rendered URL with the pod's 127.0.0.1:6432 replaced by this PgBouncer's address;
        everything else (user, password, database, query) exactly as rendered."""
        parts = urlsplit(rendered_url)
        assert (parts.hostname, parts.port) == (POD_HOST, POD_PORT), "rendered address moved"
        userinfo = parts.netloc.rpartition("@")[0]
        return urlunsplit(parts._replace(netloc=f"{userinfo}@{POD_HOST}:{self.port}"))

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _render(database_dsn: str) -> Rendered:
    # The builder unit tests' full pool (transaction pooling, exporter on by default), with
    # its database pointed at the test PostgreSQL.
    ctx = full_ctx(secrets=dataclasses.replace(FULL_SECRETS, database_dsn=database_dsn))
    children = build_children(ctx)
    assert children.secret is not None
    secret = {k: base64.b64decode(v).decode() for k, v in children.secret["data"].items()}
    pgbouncer = ctx.spec.database.pgbouncer if ctx.spec.database else None
    assert pgbouncer is not None
    return Rendered(
        ini=children.config_map["data"]["pgbouncer.ini"],
        userlist=secret["userlist.txt"],
        databases_ini=secret["databases.ini"],
        database_url=secret["database-url"],
        exporter_url=secret["pgbouncer-stats-url"],
        default_pool_size=pgbouncer.default_pool_size,
        max_client_conn=pgbouncer.max_client_connections,
    )


def _replace_line(lines: list[str], old: str, new: str | None) -> None:
    # Exact lines only: if the builder changes one, the test must notice, not run something else.
    assert old in lines, f"rendered pgbouncer.ini has no line {old!r}:\n" + "\n".join(lines)
    index = lines.index(old)
    if new is None:
        del lines[index]
    else:
        lines[index] = new


def _localized_ini(ini: str, directory: Path, port: int) -> str:
    """The rendered pgbouncer.ini with what must differ on a test machine rewritten.

    * listen_port: the pod's 6432 may be taken here (another PgBouncer, a parallel run).
    * auth_file and the %include: in the pod they are the projected Secret volume under
      /etc/pgbouncer/secret, which does not exist (and is not writable) here.
    * max_prepared_statements: only on PgBouncer < 1.21, which predates the setting and
      refuses to load a config that has it (FATAL "unknown parameter"). The line stays in the
      builder: the pods run the default image (PgBouncer 1.24), the runtime relies on it for
      prepared statements under transaction pooling, and the builder cannot tell a custom
      image's version. `test_rendered_config_loads_unmodified` reports the skip.

    Left as rendered, because they already work here: listen_addr (loopback), unix_socket_dir,
    logfile and pidfile (empty: no socket, log to stderr, no pid file; PgBouncer runs in the
    foreground, as in the pod).
    """
    lines = ini.splitlines()
    _replace_line(lines, f"listen_port = {POD_PORT}", f"listen_port = {port}")
    _replace_line(lines, f"auth_file = {POD_SECRET_DIR}/userlist.txt",
                  f"auth_file = {directory}/userlist.txt")  # fmt: skip
    _replace_line(lines, f"%include {POD_SECRET_DIR}/databases.ini",
                  f"%include {directory}/databases.ini")  # fmt: skip
    if not svc.pgbouncer_supports_prepared_statements():
        _replace_line(lines, PREPARED_STATEMENTS_LINE, None)
    return "\n".join(lines) + "\n"


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((POD_HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclasses.dataclass
class _Launcher:
    """Starts PgBouncers from a rendered config in private temporary directories."""

    rendered: Rendered
    started: list[tuple[Bouncer, tempfile.TemporaryDirectory[str]]] = dataclasses.field(
        default_factory=list
    )

    def start(self, ini: str | None = None) -> Bouncer:
        # Not pytest's tmp_path: its parent is private to root, and PgBouncer refuses to run as
        # root, so (as in the services harness) it runs as the postgres user when we are root.
        workdir = tempfile.TemporaryDirectory(prefix="agentpool-pgbouncer-")
        directory = Path(workdir.name)
        port = free_port()
        files = {
            "pgbouncer.ini": _localized_ini(ini or self.rendered.ini, directory, port),
            "userlist.txt": self.rendered.userlist,
            "databases.ini": self.rendered.databases_ini,
        }
        owner = pwd.getpwnam(svc.SERVICE_USER) if os.geteuid() == 0 else None
        for name, text in files.items():
            path = directory / name
            path.write_text(text)
            path.chmod(0o600)  # credentials: the owner only, as CREDENTIALS_MODE in the pod
            if owner:
                os.chown(path, owner.pw_uid, owner.pw_gid)
        if owner:
            os.chown(directory, owner.pw_uid, owner.pw_gid)
        log = directory / "pgbouncer.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(svc._binaries()["pgbouncer"]), str(directory / "pgbouncer.ini")],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                user=owner.pw_uid if owner else None, group=owner.pw_gid if owner else None,
                extra_groups=[] if owner else None,
            )  # fmt: skip
        bouncer = Bouncer(port=port, log=log, process=process)
        self.started.append((bouncer, workdir))
        deadline = time.monotonic() + 10
        while not _port_open(port):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"PgBouncer did not start from the rendered config:\n{bouncer.log_text()}"
                    f"\n--- pgbouncer.ini as run ---\n{files['pgbouncer.ini']}",
                    pytrace=False,
                )
            time.sleep(0.02)
        return bouncer

    def stop_all(self) -> None:
        for bouncer, workdir in self.started:
            bouncer.process.terminate()  # SIGTERM: PgBouncer's immediate shutdown
            try:
                bouncer.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                bouncer.process.kill()
                bouncer.process.wait()
            workdir.cleanup()
        self.started.clear()


@pytest.fixture(scope="module")
def rendered(services: ServiceSettings) -> Rendered:
    return _render(services.postgres_dsn)


@pytest.fixture(scope="module")
def launcher(rendered: Rendered) -> Iterator[_Launcher]:
    started = _Launcher(rendered)
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture(scope="module")
def bouncer(launcher: _Launcher) -> Bouncer:
    """One PgBouncer from the rendered config for the module's tests."""
    return launcher.start()


def _psql(url: str, sql: str) -> subprocess.CompletedProcess[str]:
    """One simple-protocol statement with psql; CSV output with a header line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return subprocess.run(
        [str(svc._binaries()["psql"]), "-X", "--csv", "-v", "ON_ERROR_STOP=1", "-d", url,
         "-c", sql],
        capture_output=True, text=True, timeout=30, check=False,
        env={**env, "PGCONNECT_TIMEOUT": "3"},
    )  # fmt: skip


def _rows(url: str, sql: str) -> list[dict[str, str]]:
    done = _psql(url, sql)
    assert done.returncode == 0, f"{sql}: {done.stderr.strip()}"
    return list(csv.DictReader(done.stdout.splitlines()))


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    user, _, _ = parts.netloc.rpartition("@")[0].partition(":")
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


def _with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


# --- the tests ---------------------------------------------------------------------------


def test_rendered_config_loads_unmodified(bouncer: Bouncer, rendered: Rendered) -> None:
    """Every setting the builder renders is one this PgBouncer knows and keeps."""
    if not svc.pgbouncer_supports_prepared_statements():
        version = ".".join(map(str, svc.pgbouncer_version()))
        pytest.skip(
            f"local PgBouncer {version} < 1.21 rejects the rendered {PREPARED_STATEMENTS_LINE!r}"
            " (the pods' default image is 1.24), so the other tests run without that line"
        )
    config = {row["key"]: row["value"] for row in _rows(bouncer.url(rendered.exporter_url),
                                                        "SHOW CONFIG")}  # fmt: skip
    assert config["max_prepared_statements"] == "200"


def test_the_exporter_runs_its_queries_as_the_stats_user(
    bouncer: Bouncer, rendered: Rendered
) -> None:
    url = bouncer.url(rendered.exporter_url)
    assert urlsplit(url).username == STATS_USER
    assert urlsplit(url).path == "/pgbouncer"
    results = {query: _rows(url, f"SHOW {query};") for query in EXPORTER_QUERIES}

    (version,) = results["VERSION"]
    assert list(version) == ["version"]  # queryVersion insists on exactly this column
    lists = {row["list"]: row["items"] for row in results["LISTS"]}
    assert {"databases", "users", "pools", "used_servers", "free_clients"} <= set(lists)
    config = {row["key"]: row["value"] for row in results["CONFIG"]}
    assert config["max_client_conn"] == str(rendered.max_client_conn)
    assert config["stats_users"] == STATS_USER
    assert config["admin_users"] == ""
    # The dashboard's pool size and the alert's waiting clients come from these columns.
    app_db = urlsplit(rendered.database_url).path.lstrip("/")
    databases = {row["name"]: row for row in results["DATABASES"]}
    assert databases[app_db]["pool_size"] == str(rendered.default_pool_size)
    assert {"database", "user", "cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_used",
            "maxwait"} <= set(results["POOLS"][0])  # fmt: skip
    assert {"database", "total_query_count", "total_wait_time"} <= set(results["STATS"][0])


async def test_the_exporter_logs_in_with_lib_pq_startup_parameters(
    bouncer: Bouncer, rendered: Rendered
) -> None:
    conn = await asyncpg.connect(bouncer.url(rendered.exporter_url),
                                 server_settings=LIB_PQ_STARTUP)  # fmt: skip
    try:
        for query in EXPORTER_QUERIES:
            await conn.execute(f"SHOW {query};")  # simple protocol; rows are discarded
    finally:
        await conn.close()


def test_the_stats_user_is_refused_admin_commands(bouncer: Bouncer, rendered: Rendered) -> None:
    url = bouncer.url(rendered.exporter_url)
    for command in ADMIN_COMMANDS:
        done = _psql(url, command)
        assert done.returncode != 0, f"the stats user ran {command!r}"
        assert "admin access needed" in done.stderr, (command, done.stderr)
    assert bouncer.process.poll() is None, "the stats user shut PgBouncer down"
    databases = _rows(url, "SHOW DATABASES")
    assert all(row["paused"] == "0" and row["disabled"] == "0" for row in databases)


def test_the_stats_user_cannot_reach_the_database(
    bouncer: Bouncer, rendered: Rendered, services: ServiceSettings
) -> None:
    """`stats_users` opens the admin console's SHOW commands, nothing else; the stats user
    must not reach the application database through PgBouncer (nor exist in PostgreSQL)."""
    app_db = urlsplit(rendered.database_url).path.lstrip("/")
    as_stats_user = _with_database(bouncer.url(rendered.exporter_url), app_db)
    done = _psql(as_stats_user, "SELECT current_user")
    assert done.returncode != 0, (
        "the exporter's stats user logged in to the application database through PgBouncer "
        f"and ran a query as {done.stdout.splitlines()[1:]}"
    )
    # Refused by PostgreSQL: PgBouncer logs in as the client's own user, which PostgreSQL
    # does not know (a forced user= in databases.ini would have let it in as the pool's user).
    # Only this one attempt: PgBouncer 1.18 holds the next client of a pool whose last server
    # login failed until server_login_retry instead of failing it at once.
    assert f'password authentication failed for user "{STATS_USER}"' in done.stderr, done.stderr
    roles = _psql(services.postgres_dsn,
                  f"SELECT rolname FROM pg_roles WHERE rolname = '{STATS_USER}'")  # fmt: skip
    assert roles.returncode == 0, roles.stderr
    assert roles.stdout.strip() == "rolname", f"{STATS_USER} exists in PostgreSQL"


def test_a_wrong_stats_password_is_refused(bouncer: Bouncer, rendered: Rendered) -> None:
    done = _psql(_with_password(bouncer.url(rendered.exporter_url), "0" * 64), "SHOW STATS")
    assert done.returncode != 0
    # PgBouncer's own SCRAM check against userlist.txt (PostgreSQL is not involved).
    assert "SASL authentication failed" in done.stderr, done.stderr


async def test_the_pool_user_still_queries_through_pgbouncer(
    bouncer: Bouncer, rendered: Rendered
) -> None:
    """The runtime's DSN (the derived Secret's database-url) still reaches PostgreSQL."""
    url = bouncer.url(rendered.database_url)
    # No named statements, so this works with or without max_prepared_statements (the pods'
    # runtime caches them: the real-pod test checks that against PgBouncer 1.24).
    conn = await asyncpg.connect(url, statement_cache_size=0)
    try:
        row = await conn.fetchrow("SELECT current_user, current_database(), 1 AS one")
    finally:
        await conn.close()
    parts = urlsplit(url)
    assert row is not None
    assert tuple(row) == (parts.username, parts.path.lstrip("/"), 1)


def test_the_pool_user_has_no_admin_console(bouncer: Bouncer, rendered: Rendered) -> None:
    done = _psql(_with_database(bouncer.url(rendered.database_url), "pgbouncer"), "SHOW STATS")
    assert done.returncode != 0
    assert "not allowed" in done.stderr, done.stderr


def test_without_stats_users_the_exporter_is_refused(
    launcher: _Launcher, rendered: Rendered
) -> None:
    """The checks above depend on the rendered stats_users line: without it the same
    connection string is turned away (so a builder that dropped it would fail them)."""
    lines = rendered.ini.splitlines()
    _replace_line(lines, f"stats_users = {STATS_USER}", "stats_users =")
    bouncer = launcher.start("\n".join(lines) + "\n")
    done = _psql(bouncer.url(rendered.exporter_url), "SHOW STATS")
    assert done.returncode != 0
    assert "not allowed" in done.stderr, done.stderr


def _samples(text: str) -> dict[str, list[tuple[str, float]]]:
    """Prometheus text -> metric name -> [(labels, value)]."""
    found: dict[str, list[tuple[str, float]]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            name, _, labels = series.partition("{")
            found.setdefault(name, []).append((labels, float(value)))
    return found


async def test_the_runtime_serves_the_exporters_metrics_from_it(
    bouncer: Bouncer, rendered: Rendered
) -> None:
    """What the runtime adds to /metrics (agent_runtime/supervisor/pgbouncer_metrics.py), read
    as the stats user with the rendered URL: pgbouncer_exporter's names, the dashboards' series."""
    text = (await PgBouncerMetrics(bouncer.url(rendered.exporter_url)).render()).decode()
    samples = _samples(text)
    assert samples["pgbouncer_up"] == [("", 1.0)]
    app_db = urlsplit(rendered.database_url).path.lstrip("/")
    pool_sizes = {labels: value for labels, value in samples["pgbouncer_databases_pool_size"]}
    assert any(f'name="{app_db}"' in labels and value == rendered.default_pool_size
               for labels, value in pool_sizes.items()), pool_sizes
    for name in ("pgbouncer_pools_client_waiting_connections",
                 "pgbouncer_pools_client_maxwait_seconds",
                 "pgbouncer_pools_server_active_connections",
                 "pgbouncer_pools_server_idle_connections", "pgbouncer_used_servers"):
        assert name in samples, f"{name} missing from:\n{text}"
    assert all('database="' in labels and 'user="' in labels
               for labels, _ in samples["pgbouncer_pools_client_waiting_connections"])


async def test_an_unreachable_pgbouncer_is_reported_not_raised(
    bouncer: Bouncer, rendered: Rendered
) -> None:
    wrong = _with_password(bouncer.url(rendered.exporter_url), "0" * 64)
    text = (await PgBouncerMetrics(wrong).render()).decode()
    assert _samples(text) == {"pgbouncer_up": [("", 0.0)]}


async def test_the_dsns_tls_timeout_and_application_name_reach_the_server(
    services: ServiceSettings,
) -> None:
    """DSN parameters are carried out, not dropped: a real PgBouncer runs with the rendered
    server_tls_sslmode and server_connect_timeout, and the server connection it lends
    carries the application_name the runtime's connection string sends."""
    dsn = f"{services.postgres_dsn}?sslmode=disable&connect_timeout=4&application_name=ap-it"
    launcher = _Launcher(_render(dsn))
    try:
        bouncer = launcher.start()
        config = {row["key"]: row["value"] for row in _rows(
            bouncer.url(launcher.rendered.exporter_url), "SHOW CONFIG")}
        assert config["server_tls_sslmode"] == "disable"
        assert float(config["server_connect_timeout"]) == 4
        conn = await asyncpg.connect(bouncer.url(launcher.rendered.database_url),
                                     statement_cache_size=0)
        try:
            name = await conn.fetchval("SELECT current_setting('application_name')")
        finally:
            await conn.close()
        assert name == "ap-it"
    finally:
        launcher.stop_all()
