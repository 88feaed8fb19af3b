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
from typing import Any
from urllib.parse import quote, urlencode

from agent_runtime import contract
from agentpool_operator.builders.common import (
    Manifest,
    object_meta,
    pgbouncer_exporter_enabled,
    secret_name,
)
from agentpool_operator.builders.context import PoolContext
from agentpool_operator.builders.dsn import STATS_USER as STATS_USER
from agentpool_operator.builders.dsn import DatabaseDsn, DsnOptions

DATABASES_INI_KEY = "databases.ini"
USERLIST_KEY = "userlist.txt"
DATABASE_URL_KEY = "database-url"
STATS_URL_KEY = "pgbouncer-stats-url"

# PgBouncer's read-only admin console, read for its metrics (see the module docstring).
ADMIN_DATABASE = "pgbouncer"

PGBOUNCER_HOST = "127.0.0.1"
PGBOUNCER_PORT = contract.PGBOUNCER_PORT

def _connstr_value(value: str) -> str:
    # PgBouncer's connection-string parser: single-quoted values, a quote doubled inside.
    return "'" + value.replace("'", "''") + "'"


def _auth_file_field(value: str) -> str:
    # PgBouncer's auth_file: double-quoted fields, a double quote doubled inside.
    return '"' + value.replace('"', '""') + '"'


def _runtime_query(options: DsnOptions) -> str:
    # Of the DSN's parameters only the application name is the client's to send: PgBouncer
    # forwards it to the server connection it lends (the others are PgBouncer's settings).
    if options.application_name is None:
        return ""
    return "?" + urlencode({"application_name": options.application_name}, quote_via=quote)


def stats_password(ctx: PoolContext, dsn: DatabaseDsn) -> str:
    """The stats user's PgBouncer password: HMAC-SHA256 of the pool's identity keyed with the
    database password (hex, so it needs no quoting anywhere)."""
    message = f"agentpool pgbouncer stats user {ctx.namespace}/{ctx.name}".encode()
    return hmac.new(dsn.password.encode("utf-8"), message, hashlib.sha256).hexdigest()


def secret_data(ctx: PoolContext) -> dict[str, str] | None:
    """The derived Secret's contents as plain strings, or None without a database."""
    if ctx.spec.database is None:
        return None
    dsn = ctx.database_dsn
    if dsn is None:  # only without a database, handled above
        return None
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
            f"{quote(dsn.dbname, safe='')}{_runtime_query(dsn.options)}"
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
