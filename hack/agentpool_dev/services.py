"""Real PostgreSQL, PgBouncer, Redis and Prometheus on loopback, for tests and for people.

Each service runs as a private instance on a non-default port with its state, config and
logs under one state directory, detached from whoever started it, so that `up` from a CLI
leaves them running. The binaries come from Debian packages (hack/install-services.sh).

    python -m agentpool_dev.services up|down|status|env
"""

from __future__ import annotations

import argparse
import contextlib
import csv as csvlib
import fcntl
import functools
import ipaddress
import json
import logging
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis

from agentpool_dev import paths

log = logging.getLogger(__name__)

INSTALL_HINT = "run hack/install-services.sh (as root) to install them"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
# PostgreSQL and PgBouncer refuse to run as root; under root they run as this Debian user.
SERVICE_USER = "postgres"
# The superuser initdb creates; only reachable over the private Unix socket.
PG_SUPERUSER = "postgres"
# Unix socket paths are limited to 107 bytes (sun_path); leave room for ".s.PGSQL.NNNNN".
MAX_SOCKET_DIR = 90


@dataclass(frozen=True)
class ServiceSettings:
    """Where the services listen and keep their state: the one source of connection settings."""

    host: str = "127.0.0.1"
    # Below the kernel's ephemeral range (32768+), where an outgoing connection could hold them.
    pg_port: int = 25432
    pgbouncer_port: int = 26432
    redis_port: int = 26379
    prometheus_port: int = 29090
    # Absolute: services are started with other working directories.
    state_dir: Path = field(default_factory=lambda: (paths.state_root() / "services").absolute())
    database: str = "agentpool"
    user: str = "agentpool"
    # Loopback-only development database: a fixed password keeps DSNs reproducible.
    password: str = "agentpool-dev"
    log_statements: bool = False
    """Log every statement PostgreSQL executes (tests read how clients prepared them)."""

    @classmethod
    def from_env(cls) -> ServiceSettings:
        """Defaults, with ports overridden by AGENTPOOL_{PG,PGBOUNCER,REDIS,PROMETHEUS}_PORT
        (the state dir follows AGENTPOOL_STATE_DIR by default)."""

        def port(name: str, default: int) -> int:
            value = os.environ.get(name)
            return int(value) if value else default

        return cls(
            pg_port=port("AGENTPOOL_PG_PORT", cls.pg_port),
            pgbouncer_port=port("AGENTPOOL_PGBOUNCER_PORT", cls.pgbouncer_port),
            redis_port=port("AGENTPOOL_REDIS_PORT", cls.redis_port),
            prometheus_port=port("AGENTPOOL_PROMETHEUS_PORT", cls.prometheus_port),
        )

    @property
    def postgres_dsn(self) -> str:
        """Direct connection to PostgreSQL."""
        return self._dsn(self.pg_port)

    @property
    def pgbouncer_dsn(self) -> str:
        """Connection through PgBouncer (transaction pooling); see `pgbouncer_asyncpg_kwargs`."""
        return self._dsn(self.pgbouncer_port)

    @property
    def pgbouncer_asyncpg_kwargs(self) -> dict[str, Any]:
        """asyncpg.connect() options that are safe under transaction pooling.

        A named prepared statement lives on one server connection, which transaction pooling
        hands to other clients between transactions. PgBouncer >= 1.21 tracks them itself
        (max_prepared_statements); older ones need asyncpg's statement cache off."""
        return {} if pgbouncer_supports_prepared_statements() else {"statement_cache_size": 0}

    @property
    def redis_url(self) -> str:
        return f"redis://{self.host}:{self.redis_port}/0"

    @property
    def prometheus_url(self) -> str:
        return f"http://{self.host}:{self.prometheus_port}"

    @property
    def prometheus_targets_dir(self) -> Path:
        """file_sd directory: each `*.json` target file dropped here gets scraped every second,
        starting within ~5s (Prometheus batches discovery updates)."""
        return self.state_dir / "prometheus" / "targets"

    @property
    def prometheus_config(self) -> Path:
        return self.state_dir / "prometheus" / "prometheus.yml"

    @property
    def promtool(self) -> Path:
        return Path(shutil.which("promtool") or "/usr/bin/promtool")

    def _dsn(self, port: int) -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{port}/{self.database}"


class ServiceError(RuntimeError):
    """A service is missing, could not start, or did not become ready."""


# --- binaries -------------------------------------------------------------------------


@functools.cache
def _binaries() -> dict[str, Path]:
    """The binaries needed, found where the Debian packages put them."""
    # Newest installed PostgreSQL major (a person may have several).
    pg_bins = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    pg_bindir = pg_bins[-1].parent if pg_bins else Path("/usr/lib/postgresql/missing/bin")
    # /usr/sbin is not on a non-root PATH.
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"])
    found = {name: pg_bindir / name for name in ("postgres", "initdb", "psql")}
    for name in ("redis-server", "pgbouncer", "prometheus", "promtool", "setpriv"):
        path = shutil.which(name, path=search)
        found[name] = Path(path) if path else Path(name)
    missing = sorted(name for name, path in found.items() if not path.is_file())
    if missing:
        raise ServiceError(f"missing service binaries: {', '.join(missing)}; {INSTALL_HINT}")
    return found


@functools.cache
def pgbouncer_version() -> tuple[int, ...]:
    out = subprocess.run(
        [_binaries()["pgbouncer"], "--version"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"PgBouncer (\d+)\.(\d+)(?:\.(\d+))?", out)
    if not match:
        raise ServiceError(f"cannot parse pgbouncer --version output: {out!r}")
    return tuple(int(part) for part in match.groups(default="0"))


def pgbouncer_supports_prepared_statements() -> bool:
    """Protocol-level prepared statements under transaction pooling came in PgBouncer 1.21."""
    return pgbouncer_version() >= (1, 21)


# --- processes ------------------------------------------------------------------------


def _drop_root() -> bool:
    return os.geteuid() == 0


def _service_owner() -> tuple[int, int]:
    """uid/gid that PostgreSQL and PgBouncer run as, and that owns their directories."""
    if not _drop_root():
        return os.getuid(), os.getgid()
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise ServiceError(f"no {SERVICE_USER!r} system user; {INSTALL_HINT}") from None
    return entry.pw_uid, entry.pw_gid


def _service_dir(path: Path, *, service_user: bool) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if service_user and _drop_root():
        os.chown(path, *_service_owner())
    path.chmod(0o700)
    return path


def _socket_dir(path: Path) -> Path:
    if len(str(path)) > MAX_SOCKET_DIR:
        raise ServiceError(f"socket path {path} too long; set a shorter AGENTPOOL_STATE_DIR")
    return _service_dir(path, service_user=True)


def _grant_traversal(path: Path) -> None:
    """Let the service user reach `path` when running as root: /root is usually 0700.

    Only the search bit is added, so the service user can reach its own directories
    without being able to list anything on the way."""
    for directory in [*reversed(path.parents), path]:
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            log.info("adding o+x to %s so that %s can reach %s", directory, SERVICE_USER, path)
            directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _spawn(argv: list[str], logfile: Path, *, service_user: bool) -> int:
    """Start `argv` in a session of its own with output to `logfile`; return its pid.

    Its own session keeps it out of reach of a Ctrl-C sent to the test run, and it outlives
    a CLI `up` (init adopts it). posix_spawn rather than Popen: no Popen object is left to
    complain about a running child; `_alive` reaps the child once it has stopped."""
    setpriv = service_user and _drop_root()
    if setpriv:
        argv = [
            str(_binaries()["setpriv"]),
            f"--reuid={SERVICE_USER}",
            f"--regid={SERVICE_USER}",
            "--clear-groups",
            "--",
            *argv,
        ]
    pid = os.posix_spawn(
        argv[0],
        argv,
        dict(os.environ),
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(logfile), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ],
        setsid=True,
        # Whatever the caller ignores or blocks (nohup, a shell's background job ignoring
        # SIGINT, ...) must not be inherited: the stop signals have to work.
        setsigdef=(signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP),
        setsigmask=(),
    )
    if setpriv:
        # Return once setpriv has exec'd the server, so that the pid names the server.
        _wait_gone(pid, "setpriv", 5)
    return pid


def _alive(pid: int, name: str | None = None) -> bool:
    """True if `pid` runs, and runs the executable `name` if given (stale pid files)."""
    # Reap it if it is a child of ours that exited (services spawned by this process).
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        proc = psutil.Process(pid)
        # Orphans may linger as zombies when init is slow to reap them.
        return proc.status() != psutil.STATUS_ZOMBIE and name in (None, proc.name())
    except psutil.Error:
        return False


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(f"    {line}" for line in text) or "    (empty log)"


def _psql(
    settings: ServiceSettings,
    sql: str,
    *,
    superuser: bool = False,
    port: int | None = None,
    database: str | None = None,
    csv: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run one statement with psql: as the PostgreSQL superuser over the private Unix
    socket, or as the agentpool user over TCP (directly or via `port`, e.g. PgBouncer's).
    Output is bare values, or CSV with a header line."""
    if superuser:
        target = ["-h", str(_pg_socket_dir(settings)), "-p", str(settings.pg_port)]
        target += ["-U", PG_SUPERUSER, "-d", database or "postgres"]
    else:
        target = ["-h", settings.host, "-p", str(port or settings.pg_port), "-U", settings.user]
        target += ["-d", database or settings.database]
    env = {**os.environ, "PGPASSWORD": settings.password, "PGCONNECT_TIMEOUT": "3"}
    output = ["--csv"] if csv else ["-A", "-t"]
    return subprocess.run(
        [str(_binaries()["psql"]), "-X", *output, "-v", "ON_ERROR_STOP=1", *target, "-c", sql],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )


def _psql_value(settings: ServiceSettings, sql: str, **kwargs: Any) -> str:
    done = _psql(settings, sql, **kwargs)
    if done.returncode != 0:
        raise ServiceError(f"psql failed: {sql}\n{done.stderr.strip()}")
    return done.stdout.strip()


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ident(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


# --- the services ----------------------------------------------------------------------


def _pg_dir(settings: ServiceSettings) -> Path:
    return settings.state_dir / "postgres"


def _logfile(settings: ServiceSettings, name: str) -> Path:
    return settings.state_dir / name / f"{name}.log"


def postgres_log(settings: ServiceSettings) -> Path:
    """PostgreSQL's log file (statements too, with `log_statements`)."""
    return _logfile(settings, "postgres")


def _pg_socket_dir(settings: ServiceSettings) -> Path:
    return _pg_dir(settings) / "run"


def _start_postgres(settings: ServiceSettings) -> int:
    base = _service_dir(_pg_dir(settings), service_user=True)
    data, sockets = base / "data", _socket_dir(_pg_socket_dir(settings))
    bins = _binaries()
    if not (data / "PG_VERSION").exists():
        shutil.rmtree(data, ignore_errors=True)  # a half-done initdb
        _run_as_service_user(
            [
                str(bins["initdb"]),
                "-D", str(data),
                "-U", PG_SUPERUSER,
                "--auth-local=trust",  # the socket dir is private to the service user
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ],
            cwd=base,
        )  # fmt: skip
    _allow_remote_clients(settings, data)
    options = {
        "listen_addresses": settings.host,
        "port": str(settings.pg_port),
        "unix_socket_directories": str(sockets),
        "max_connections": "200",
        # A throwaway development database: durability only slows the tests down.
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
    }
    if settings.log_statements:
        options["log_min_duration_statement"] = "0"
    argv = [str(bins["postgres"]), "-D", str(data)]
    for key, value in options.items():
        argv += ["-c", f"{key}={value}"]
    return _spawn(argv, _logfile(settings, "postgres"), service_user=True)


# Appended to pg_hba.conf when PostgreSQL listens on a non-loopback address: that address is
# the test cluster's bridge, and its clients are pods with addresses of their own.
_REMOTE_HBA = "host all all 0.0.0.0/0 scram-sha-256  # agentpool: pods on the cluster bridge\n"


def _loopback(settings: ServiceSettings) -> bool:
    return ipaddress.ip_address(settings.host).is_loopback


def _allow_remote_clients(settings: ServiceSettings, data: Path) -> None:
    """initdb only admits loopback clients; a server bound to the cluster's bridge (only
    there: listen_addresses) must also admit the pods behind it, still by password."""
    if _loopback(settings):
        return
    hba = data / "pg_hba.conf"
    if _REMOTE_HBA not in hba.read_text():
        with hba.open("a") as out:
            out.write(_REMOTE_HBA)


def _run_as_service_user(argv: list[str], cwd: Path) -> None:
    user: dict[str, Any] = {}
    if _drop_root():
        user = {"user": SERVICE_USER, "group": SERVICE_USER, "extra_groups": []}
    done = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, check=False, **user)
    if done.returncode != 0:
        raise ServiceError(f"{shlex.join(argv)} failed:\n{done.stdout}{done.stderr}")


def _ensure_database(settings: ServiceSettings) -> None:
    """Create the agentpool role and database on a fresh cluster (then leave a marker)."""
    marker = _pg_dir(settings) / "data" / "agentpool-initialized"
    if marker.exists():
        return
    deadline = time.monotonic() + START_TIMEOUT
    while _psql(settings, "SELECT 1", superuser=True).returncode != 0:
        if time.monotonic() > deadline:
            log_tail = _tail(_logfile(settings, "postgres"))
            raise ServiceError(f"postgres: superuser socket login failed\n{log_tail}")
        time.sleep(0.1)
    role = _literal(settings.user)
    if not _psql_value(settings, f"SELECT 1 FROM pg_roles WHERE rolname = {role}", superuser=True):
        _psql_value(
            settings,
            f"CREATE ROLE {_ident(settings.user)} LOGIN PASSWORD {_literal(settings.password)}",
            superuser=True,
        )
    db = _literal(settings.database)
    if not _psql_value(settings, f"SELECT 1 FROM pg_database WHERE datname = {db}", superuser=True):
        _psql_value(
            settings,
            f"CREATE DATABASE {_ident(settings.database)} OWNER {_ident(settings.user)}",
            superuser=True,
        )
    marker.touch()


def _postgres_ready(settings: ServiceSettings) -> bool:
    return _psql(settings, "SELECT 1").returncode == 0


def _start_pgbouncer(settings: ServiceSettings) -> int:
    base = _service_dir(settings.state_dir / "pgbouncer", service_user=True)
    sockets = _socket_dir(base / "run")
    # The SCRAM secret PostgreSQL stores: PgBouncer verifies clients with it and then
    # logs in to PostgreSQL with the client's proof (SCRAM pass-through), no plain text.
    secret = _psql_value(
        settings,
        f"SELECT rolpassword FROM pg_authid WHERE rolname = {_literal(settings.user)}",
        superuser=True,
    )
    if not secret.startswith("SCRAM-SHA-256$"):
        raise ServiceError(f"postgres: no SCRAM secret for role {settings.user!r}")
    userlist = base / "userlist.txt"
    ini = base / "pgbouncer.ini"
    config = {
        "listen_addr": settings.host,
        "listen_port": str(settings.pgbouncer_port),
        "unix_socket_dir": str(sockets),
        "auth_type": "scram-sha-256",
        "auth_file": str(userlist),
        "pool_mode": "transaction",
        "admin_users": settings.user,
        "stats_users": settings.user,
        "max_client_conn": "500",
        "default_pool_size": "20",
    }
    if pgbouncer_supports_prepared_statements():
        config["max_prepared_statements"] = "200"
    lines = [
        "[databases]",
        # Any database name goes to our PostgreSQL, so tests can create their own.
        f"* = host={settings.host} port={settings.pg_port}",
        "[pgbouncer]",
        *(f"{key} = {value}" for key, value in config.items()),
    ]
    for path, text in ((userlist, f'"{settings.user}" "{secret}"\n'), (ini, "\n".join(lines))):
        path.write_text(text)
        path.chmod(0o600)
        if _drop_root():
            os.chown(path, *_service_owner())
    argv = [str(_binaries()["pgbouncer"]), str(ini)]
    return _spawn(argv, _logfile(settings, "pgbouncer"), service_user=True)


def _pgbouncer_ready(settings: ServiceSettings) -> bool:
    return _psql(settings, "SELECT 1", port=settings.pgbouncer_port).returncode == 0


def _start_redis(settings: ServiceSettings) -> int:
    base = _service_dir(settings.state_dir / "redis", service_user=False)
    config = base / "redis.conf"
    config.write_text(
        "\n".join(
            [
                f"bind {settings.host}",
                f"port {settings.redis_port}",
                # Protected mode refuses every client but loopback ones while no password is
                # set; bound to the cluster bridge, the clients are the test cluster's pods.
                f"protected-mode {'yes' if _loopback(settings) else 'no'}",
                # Pure cache for tests: nothing survives a restart.
                'save ""',
                "appendonly no",
                f"dir {base}",
                'logfile ""',
                "daemonize no",
            ]
        )
        + "\n"
    )
    argv = [str(_binaries()["redis-server"]), str(config)]
    return _spawn(argv, _logfile(settings, "redis"), service_user=False)


def _redis_ready(settings: ServiceSettings) -> bool:
    client = redis.Redis(host=settings.host, port=settings.redis_port, socket_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _start_prometheus(settings: ServiceSettings) -> int:
    base = _service_dir(settings.state_dir / "prometheus", service_user=False)
    settings.prometheus_targets_dir.mkdir(exist_ok=True)
    # JSON is YAML; short intervals so tests see a new target within a couple of seconds.
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "file_sd",
                # As the chart's ServiceMonitor: series that name their pool's namespace
                # (the queue gauges, the operator's per-pool series) keep it.
                "honor_labels": True,
                "file_sd_configs": [
                    {
                        "files": [str(settings.prometheus_targets_dir / "*.json")],
                        "refresh_interval": "1s",
                    }
                ],
            }
        ],
    }
    settings.prometheus_config.write_text(json.dumps(config, indent=2) + "\n")
    argv = [
        str(_binaries()["prometheus"]),
        f"--config.file={settings.prometheus_config}",
        f"--storage.tsdb.path={base / 'data'}",
        "--storage.tsdb.retention.time=1d",
        f"--web.listen-address={settings.host}:{settings.prometheus_port}",
        "--web.enable-lifecycle",
    ]
    return _spawn(argv, _logfile(settings, "prometheus"), service_user=False)


def _prometheus_ready(settings: ServiceSettings) -> bool:
    try:
        with urllib.request.urlopen(f"{settings.prometheus_url}/-/ready", timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@dataclass(frozen=True)
class _Service:
    name: str
    binary: str
    port_env: str
    port: Callable[[ServiceSettings], int]
    start: Callable[[ServiceSettings], int]
    ready: Callable[[ServiceSettings], bool]
    stop_signal: signal.Signals


# Start order: PgBouncer needs PostgreSQL's role; the others boot while PostgreSQL does.
SERVICES: dict[str, _Service] = {
    s.name: s
    for s in (
        _Service(
            "prometheus", "prometheus", "AGENTPOOL_PROMETHEUS_PORT",
            lambda s: s.prometheus_port, _start_prometheus, _prometheus_ready, signal.SIGTERM,
        ),
        _Service(
            "redis", "redis-server", "AGENTPOOL_REDIS_PORT",
            lambda s: s.redis_port, _start_redis, _redis_ready, signal.SIGTERM,
        ),
        _Service(
            # SIGINT is PostgreSQL's "fast" shutdown: roll back sessions, checkpoint, exit.
            "postgres", "postgres", "AGENTPOOL_PG_PORT",
            lambda s: s.pg_port, _start_postgres, _postgres_ready, signal.SIGINT,
        ),
        _Service(
            # SIGTERM is PgBouncer's immediate shutdown (SIGINT would wait for clients).
            "pgbouncer", "pgbouncer", "AGENTPOOL_PGBOUNCER_PORT",
            lambda s: s.pgbouncer_port, _start_pgbouncer, _pgbouncer_ready, signal.SIGTERM,
        ),
    )
}  # fmt: skip


def _pidfile(settings: ServiceSettings, name: str) -> Path:
    return settings.state_dir / f"{name}.pid"


def _pid(settings: ServiceSettings, name: str) -> int | None:
    """The service's pid if its pid file names a live process of the right binary."""
    try:
        pid = int(_pidfile(settings, name).read_text())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid, SERVICES[name].binary) else None


def _wait_ready(settings: ServiceSettings, service: _Service, pid: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not service.ready(settings):
        problem = None
        if not _alive(pid, service.binary):
            problem = "exited during start-up"
        elif time.monotonic() > deadline:
            problem = f"not ready after {START_TIMEOUT:.0f}s"
        if problem:
            logfile = _logfile(settings, service.name)
            raise ServiceError(f"{service.name} {problem}; last lines of {logfile}:\n"
                               f"{_tail(logfile)}")  # fmt: skip
        time.sleep(0.1)


def _ensure_started(settings: ServiceSettings, service: _Service) -> int:
    """Start the service unless its pid file names a live process; return the pid."""
    pid = _pid(settings, service.name)
    if pid is not None:
        return pid
    port = service.port(settings)
    if _port_open(settings.host, port):
        raise ServiceError(
            f"{service.name}: port {settings.host}:{port} is taken by a process we did not "
            f"start; stop it or choose another port with {service.port_env}"
        )
    pid = service.start(settings)
    _pidfile(settings, service.name).write_text(f"{pid}\n")
    return pid


def _stop(settings: ServiceSettings, service: _Service) -> None:
    pid = _pid(settings, service.name)
    if pid is not None:
        proc = psutil.Process(pid)
        # Collected up front: once the parent dies they are reparented and hard to find.
        # PostgreSQL's backends call setsid(), so killing a process group would miss them.
        children = proc.children(recursive=True)
        proc.send_signal(service.stop_signal)
        if not _wait_gone(pid, service.binary, STOP_TIMEOUT):
            log.warning("%s (pid %d) ignored %s; killing it", service.name, pid,
                        service.stop_signal.name)  # fmt: skip
            for victim in [proc, *children]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    victim.kill()
            psutil.wait_procs(children, timeout=5)
            _wait_gone(pid, service.binary, 5)
    _pidfile(settings, service.name).unlink(missing_ok=True)


def _wait_gone(pid: int, name: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid, name):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _start(settings: ServiceSettings, names: Iterable[str]) -> None:
    names = list(names)
    pids: dict[str, int] = {}
    for name in names:
        service = SERVICES[name]
        if name == "pgbouncer":
            # PgBouncer's start reads the role's secret from a ready PostgreSQL.
            for earlier, pid in pids.items():
                _wait_ready(settings, SERVICES[earlier], pid)
            pids.clear()
        pids[name] = _ensure_started(settings, service)
        if name == "postgres":
            _ensure_database(settings)
    for name, pid in pids.items():
        _wait_ready(settings, SERVICES[name], pid)


@contextlib.contextmanager
def _locked(settings: ServiceSettings) -> Iterator[None]:
    """Serialise up/down/restart across processes (parallel test runs share services)."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    with (settings.state_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# --- public API ------------------------------------------------------------------------


def up(settings: ServiceSettings | None = None) -> ServiceSettings:
    """Start every service that is not running and wait until each answers queries."""
    settings = settings or ServiceSettings.from_env()
    _binaries()
    with _locked(settings):
        _up_locked(settings)
    return settings


def _up_locked(settings: ServiceSettings) -> None:
    if _drop_root():
        _grant_traversal(settings.state_dir)
    _start(settings, SERVICES)


def down(settings: ServiceSettings | None = None, names: Iterable[str] | None = None) -> None:
    """Stop the services (all, or `names`): polite signal, SIGKILL after a timeout."""
    settings = settings or ServiceSettings.from_env()
    with _locked(settings):
        _stop_many(settings, SERVICES if names is None else names)


def _stop_many(settings: ServiceSettings, names: Iterable[str]) -> None:
    wanted = set(names)
    # Reverse start order: PgBouncer before the PostgreSQL behind it.
    for name in reversed(SERVICES):
        if name in wanted:
            _stop(settings, SERVICES[name])


def status(settings: ServiceSettings | None = None) -> dict[str, bool]:
    """Per service: its pid file names a live process and its port answers."""
    settings = settings or ServiceSettings.from_env()
    return {
        name: _pid(settings, name) is not None and _port_open(settings.host, service.port(settings))
        for name, service in SERVICES.items()
    }


def pids(settings: ServiceSettings | None = None) -> dict[str, int | None]:
    """Per service: the pid of the running process, or None."""
    settings = settings or ServiceSettings.from_env()
    return {name: _pid(settings, name) for name in SERVICES}


def pgbouncer_show(settings: ServiceSettings, what: str) -> list[dict[str, str]]:
    """Rows of PgBouncer's admin command `SHOW <what>` (e.g. POOLS, STATS, CONFIG).

    Through psql: the admin console only speaks the simple query protocol, which asyncpg
    does not use for queries that return rows."""
    out = _psql_value(
        settings, f"SHOW {what}", port=settings.pgbouncer_port, database="pgbouncer", csv=True
    )
    return list(csvlib.DictReader(out.splitlines()))


def _restart(settings: ServiceSettings, name: str) -> None:
    with _locked(settings):
        _stop(settings, SERVICES[name])
        _start(settings, [name])


def restart_redis(settings: ServiceSettings) -> None:
    """Stop and start Redis (it keeps no data, so it comes back empty)."""
    _restart(settings, "redis")


def restart_pgbouncer(settings: ServiceSettings) -> None:
    """Stop and start PgBouncer: every client connection through it is cut."""
    _restart(settings, "pgbouncer")


def restart_postgres(settings: ServiceSettings) -> None:
    """Fast-shutdown and start PostgreSQL; PgBouncer stays up and reconnects."""
    _restart(settings, "postgres")


@contextlib.contextmanager
def session(settings: ServiceSettings | None = None) -> Iterator[ServiceSettings]:
    """The services for the length of, e.g., a test session.

    On exit, services that some `session` started are stopped once no other live session
    uses them; services that were already running (a person's `up`) are left alone."""
    settings = settings or ServiceSettings.from_env()
    _binaries()
    leases = settings.state_dir / "sessions"
    started_file = settings.state_dir / "session-started"
    # pid first, so that leases of crashed sessions can be recognised and dropped.
    lease = leases / f"{os.getpid()}-{uuid.uuid4().hex}"
    with _locked(settings):
        new = {name for name, running in status(settings).items() if not running}
        try:
            _up_locked(settings)
        except BaseException:
            _stop_many(settings, new)  # leave no half-started services behind
            raise
        started = _read_names(started_file) | new
        started_file.write_text("".join(f"{name}\n" for name in sorted(started)))
        leases.mkdir(exist_ok=True)
        lease.touch()
    try:
        yield settings
    finally:
        with _locked(settings):
            lease.unlink(missing_ok=True)
            if not _live_leases(leases):
                _stop_many(settings, _read_names(started_file))
                started_file.unlink(missing_ok=True)


def _read_names(path: Path) -> set[str]:
    try:
        return set(path.read_text().split())
    except FileNotFoundError:
        return set()


def _live_leases(leases: Path) -> list[Path]:
    """Lease files of sessions whose process still runs; stale ones are removed."""
    live = []
    for lease in leases.iterdir():
        try:
            pid = int(lease.name.split("-")[0])
            alive = psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except (ValueError, psutil.Error):
            alive = False
        if alive:
            live.append(lease)
        else:
            lease.unlink(missing_ok=True)
    return live


def env_lines(settings: ServiceSettings) -> list[str]:
    """Shell `export` lines pointing the application at the services."""
    values = {
        "AGENTPOOL_REDIS_URL": settings.redis_url,
        "AGENTPOOL_DATABASE_URL": settings.postgres_dsn,
        "AGENTPOOL_PGBOUNCER_URL": settings.pgbouncer_dsn,
        "AGENTPOOL_PROMETHEUS_URL": settings.prometheus_url,
    }
    return [f"export {key}={shlex.quote(value)}" for key, value in values.items()]


def main(argv: list[str]) -> int:
    """CLI: up | down | status | env."""
    parser = argparse.ArgumentParser(
        prog="agentpool_dev services",
        description="Real PostgreSQL, PgBouncer, Redis and Prometheus on loopback.",
    )
    parser.add_argument("command", choices=["up", "down", "status", "env"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = ServiceSettings.from_env()
    try:
        if args.command == "up":
            began = time.monotonic()
            up(settings)
            print(f"services up in {time.monotonic() - began:.1f}s (state: {settings.state_dir})")
            print("\n".join(env_lines(settings)))
        elif args.command == "down":
            down(settings)
        elif args.command == "env":
            print("\n".join(env_lines(settings)))
        else:
            running = status(settings)
            for name, ok in running.items():
                print(f"{name:<11} {'running' if ok else 'stopped'}")
            return 0 if all(running.values()) else 1
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
