"""The derived Secret `<pool>-pgbouncer`: PgBouncer's credentials and the runtime's database URL.

Built from the user's DSN (`spec.database.dsnSecretRef`, read by the reconciler into
`SecretValues.database_dsn`). Only pools with a database have one: without a database there
is no credential to hold (the Redis URLs reach the pod straight from the user's Secrets), so
`build_secret` returns None and the reconciler prunes a Secret left from an earlier spec,
taking the stale credentials with it.

Keys:

* `databases.ini` - PgBouncer's `[databases]` section, `%include`d by `pgbouncer.ini`: where
  the database is, and no user or password. An entry with `user=` would make PgBouncer log in
  to PostgreSQL as that user for every client it admits, so any user in `userlist.txt` - the
  stats user too - would get the application database. Without it PgBouncer logs
  in as the client's own user with that user's password from `userlist.txt`: the pool's user
  reaches its database, and the stats user, which PostgreSQL does not know, is refused.
* `userlist.txt` - PgBouncer's auth_file: the credentials workers log in to PgBouncer with.
* `database-url` - `AGENTPOOL_DATABASE_URL` for the runtime: the same user through PgBouncer
  on 127.0.0.1:6432.
* `pgbouncer-stats-url` - only with PgBouncer metrics on: the runtime's
  `AGENTPOOL_PGBOUNCER_STATS_URL`, PgBouncer's admin console (`pgbouncer` database) as
  the stats-only user `agentpool_stats`, whose entry `userlist.txt` then also holds. That
  user exists only in PgBouncer (`stats_users`: SHOW commands, nothing else); its password
  is derived from the database password with HMAC-SHA256, so it is stable across reconciles
  (the builders are pure), unguessable without the database password, and changes with it.

The object carries base64 `data`, not `stringData`: the API server folds `stringData` into
`data` and never returns it, so a `stringData` manifest would never compare equal to the live
object, and keys dropped from it would not be pruned by server-side apply.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from agentpool_operator.builders.common import (
    Manifest,
    object_meta,
    pgbouncer_exporter_enabled,
    secret_name,
)
from agentpool_operator.builders.context import PoolContext

DATABASES_INI_KEY = "databases.ini"
USERLIST_KEY = "userlist.txt"
DATABASE_URL_KEY = "database-url"
STATS_URL_KEY = "pgbouncer-stats-url"

# PgBouncer's read-only admin console user for its metrics (see the module docstring).
STATS_USER = "agentpool_stats"
ADMIN_DATABASE = "pgbouncer"

PGBOUNCER_HOST = "127.0.0.1"
PGBOUNCER_PORT = 6432
DEFAULT_POSTGRES_PORT = 5432

_SCHEMES = ("postgresql", "postgres")
# Query parameters that would override the parts we take from the URL: honouring them in the
# PgBouncer entry is not implemented, and silently ignoring them would connect elsewhere.
_OVERRIDING_PARAMS = frozenset({"host", "hostaddr", "port", "user", "password", "dbname"})
# The database name doubles as PgBouncer's alias (an ini key, unquoted) and as the URL path.
_ALIAS = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# PgBouncer's own admin console; an alias with this name is rejected at load time.
_RESERVED_ALIASES = frozenset({"pgbouncer"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class InvalidDatabaseDsn(ValueError):
    """`database.dsnSecretRef` does not hold a usable `postgresql://` URL.

    The message says what is wrong without quoting the DSN: it may carry a password, and the
    reconciler copies this message into the pool's Degraded condition (InvalidDatabaseDSN).
    """


@dataclass(frozen=True)
class DatabaseDsn:
    """The parts of a PostgreSQL URL PgBouncer needs (percent-decoded)."""

    host: str
    port: int
    dbname: str
    user: str
    password: str = field(repr=False)


def parse_database_dsn(dsn: str | None) -> DatabaseDsn:
    """Parse a `postgresql://user:password@host[:port]/dbname` URL.

    A missing port means 5432 and a missing database name means the user name (libpq's
    defaults). Raises `InvalidDatabaseDsn` (never quoting the DSN) for anything else that
    cannot be turned into a PgBouncer entry.
    """
    if not dsn:
        raise InvalidDatabaseDsn("the database DSN is empty or missing")
    try:
        # `from None` everywhere: urllib's messages may quote parts of the DSN.
        parts = urlsplit(dsn.strip())
        port = parts.port
    except ValueError:
        raise InvalidDatabaseDsn(
            "the database DSN is not a valid URL (check the host and the port)"
        ) from None
    if parts.scheme not in _SCHEMES:
        raise InvalidDatabaseDsn("the database DSN must be a postgresql:// or postgres:// URL")
    if "," in parts.netloc:
        raise InvalidDatabaseDsn("the database DSN names several hosts; use a single host")
    if not parts.hostname:
        raise InvalidDatabaseDsn("the database DSN has no host")
    if port == 0:
        raise InvalidDatabaseDsn("the database DSN's port must be between 1 and 65535")
    if parts.username is None or not unquote(parts.username):
        raise InvalidDatabaseDsn("the database DSN has no user name")
    if parts.password is None or not unquote(parts.password):
        raise InvalidDatabaseDsn("the database DSN has no password (PgBouncer needs one)")
    query_keys = {item.split("=", 1)[0] for item in parts.query.split("&") if item}
    if query_keys & _OVERRIDING_PARAMS:
        raise InvalidDatabaseDsn(
            "the database DSN sets host, port, user, password or dbname as a query parameter; "
            "put them in the URL itself"
        )
    user = unquote(parts.username)
    dbname = unquote(parts.path.lstrip("/")) or user
    parsed = DatabaseDsn(
        host=parts.hostname,
        port=port if port is not None else DEFAULT_POSTGRES_PORT,
        dbname=dbname,
        user=user,
        password=unquote(parts.password),
    )
    _check_usable(parsed)
    return parsed


def _check_usable(dsn: DatabaseDsn) -> None:
    if any(_CONTROL.search(value) for value in (dsn.host, dsn.dbname, dsn.user, dsn.password)):
        # A newline would end the ini line or the auth_file entry early.
        raise InvalidDatabaseDsn("the database DSN contains control characters")
    if dsn.user == STATS_USER:
        raise InvalidDatabaseDsn(
            f"the database user in the DSN must not be {STATS_USER!r}: PgBouncer reserves that "
            "name for reading its metrics"
        )
    if not _ALIAS.match(dsn.dbname) or dsn.dbname in _RESERVED_ALIASES:
        raise InvalidDatabaseDsn(
            "the database name in the DSN must be letters, digits, '_', '.' or '-' and not "
            "'pgbouncer' (PgBouncer uses it as the database alias)"
        )


def _connstr_value(value: str) -> str:
    # PgBouncer's connection-string parser: single-quoted values, a quote doubled inside.
    return "'" + value.replace("'", "''") + "'"


def _auth_file_field(value: str) -> str:
    # PgBouncer's auth_file: double-quoted fields, a double quote doubled inside.
    return '"' + value.replace('"', '""') + '"'


def stats_password(ctx: PoolContext, dsn: DatabaseDsn) -> str:
    """The stats user's PgBouncer password: HMAC-SHA256 of the pool's identity keyed with the
    database password (hex, so it needs no quoting anywhere)."""
    message = f"agentpool pgbouncer stats user {ctx.namespace}/{ctx.name}".encode()
    return hmac.new(dsn.password.encode("utf-8"), message, hashlib.sha256).hexdigest()


def secret_data(ctx: PoolContext) -> dict[str, str] | None:
    """The derived Secret's contents as plain strings, or None without a database."""
    if ctx.spec.database is None:
        return None
    dsn = parse_database_dsn(ctx.secrets.database_dsn)
    # No user= (nor password=): see the module docstring.
    entry = " ".join(
        f"{key}={_connstr_value(value)}"
        for key, value in (("host", dsn.host), ("port", str(dsn.port)), ("dbname", dsn.dbname))
    )
    userinfo = f"{quote(dsn.user, safe='')}:{quote(dsn.password, safe='')}"
    userlist = f"{_auth_file_field(dsn.user)} {_auth_file_field(dsn.password)}\n"
    data = {
        DATABASES_INI_KEY: f"[databases]\n{dsn.dbname} = {entry}\n",
        USERLIST_KEY: userlist,
        DATABASE_URL_KEY: (
            f"postgresql://{userinfo}@{PGBOUNCER_HOST}:{PGBOUNCER_PORT}/"
            f"{quote(dsn.dbname, safe='')}"
        ),
    }
    if pgbouncer_exporter_enabled(ctx.spec):
        password = stats_password(ctx, dsn)
        data[USERLIST_KEY] += f"{_auth_file_field(STATS_USER)} {_auth_file_field(password)}\n"
        # Loopback inside the pod, and PgBouncer is configured without TLS.
        data[STATS_URL_KEY] = (
            f"postgres://{STATS_USER}:{password}@{PGBOUNCER_HOST}:{PGBOUNCER_PORT}/"
            f"{ADMIN_DATABASE}?sslmode=disable"
        )
    return data


def build_secret(ctx: PoolContext) -> Manifest | None:
    """The `<pool>-pgbouncer` Secret, or None when the pool has no database."""
    data = secret_data(ctx)
    if data is None:
        return None
    encoded: dict[str, Any] = {
        key: base64.b64encode(value.encode("utf-8")).decode("ascii")
        for key, value in sorted(data.items())
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": object_meta(ctx, secret_name(ctx.name)),
        "type": "Opaque",
        "data": encoded,
    }
