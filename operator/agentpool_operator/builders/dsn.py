"""The database DSN a pool's Secret holds, parsed into what PgBouncer needs (pure).

`parse_database_dsn` reads `postgresql://user:password@host[:port]/dbname[?params]` and
refuses, with a message that says how to fix it and never quotes the DSN, anything PgBouncer
could not carry out exactly: several hosts, control characters, parameters it cannot honour.
Nothing is dropped silently: each query parameter is either carried (`DsnOptions`) or refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

# PgBouncer's read-only admin console user, for its metrics (see secret.py).
STATS_USER = "agentpool_stats"
DEFAULT_POSTGRES_PORT = 5432

_SCHEMES = ("postgresql", "postgres")
# Query parameters that would override the parts we take from the URL: honouring them in the
# PgBouncer entry is not implemented, and silently ignoring them would connect elsewhere.
_OVERRIDING_PARAMS = frozenset({"host", "hostaddr", "port", "user", "password", "dbname"})
# Query parameters PgBouncer can honour (see DsnOptions); any other is refused, never dropped.
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_TLS_VERSIONS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
_CARRIED_PARAMS = ("sslmode", "sslrootcert", "ssl_min_protocol_version", "connect_timeout",
                   "application_name")
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
class DsnOptions:
    """The DSN's query parameters, as PgBouncer carries them out (libpq's meaning kept).

    `sslmode` and `ssl_min_protocol_version` become PgBouncer's `server_tls_sslmode` and
    `server_tls_protocols`; the verify modes check the server against the image's system CA
    bundle (`sslrootcert=system`, the only CA file a pod has); `connect_timeout` becomes
    `server_connect_timeout`; `application_name` travels in the runtime's own connection
    string, and PgBouncer passes it on (it tracks that parameter per client).
    """

    sslmode: str | None = None
    ssl_min_protocol_version: str | None = None
    connect_timeout: int | None = None
    application_name: str | None = None


@dataclass(frozen=True)
class DatabaseDsn:
    """The parts of a PostgreSQL URL PgBouncer needs (percent-decoded)."""

    host: str
    port: int
    dbname: str
    user: str
    password: str = field(repr=False)
    options: DsnOptions = field(default_factory=DsnOptions)


def parse_database_dsn(dsn: str | None) -> DatabaseDsn:
    """Parse a `postgresql://user:password@host[:port]/dbname` URL.

    A missing port means 5432 and a missing database name means the user name (libpq's
    defaults). Raises `InvalidDatabaseDsn` (never quoting the DSN) for anything else that
    cannot be turned into a PgBouncer entry.
    """
    if not dsn or not dsn.strip():
        raise InvalidDatabaseDsn("the database DSN is empty or missing")
    if _CONTROL.search(dsn.strip()):
        # urlsplit would silently delete a raw tab or newline, and PgBouncer would then log in
        # with another password than the Secret holds.
        raise InvalidDatabaseDsn(
            "the database DSN contains a raw control character (a newline or tab inside it): "
            "remove it from the Secret; a password cannot contain control characters")
    try:
        # `from None` everywhere: urllib's messages may quote parts of the DSN.
        parts = urlsplit(dsn.strip())
        port = parts.port
    except ValueError:
        raise InvalidDatabaseDsn(
            "the database DSN is not a valid URL: check the host and the port, and "
            "percent-encode reserved characters in the user name and password "
            "(@ : / ? # [ ] % as %40 %3A %2F %3F %23 %5B %5D %25)"
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
    user = unquote(parts.username)
    dbname = unquote(parts.path.lstrip("/")) or user
    parsed = DatabaseDsn(
        host=parts.hostname,
        port=port if port is not None else DEFAULT_POSTGRES_PORT,
        dbname=dbname,
        user=user,
        password=unquote(parts.password),
        options=_options(parts.query),
    )
    _check_usable(parsed)
    return parsed


def _options(query: str) -> DsnOptions:
    """The query parameters PgBouncer can carry out; InvalidDatabaseDsn for any other."""
    params: dict[str, str] = {}
    for item in query.split("&"):
        if item:
            key, _, value = item.partition("=")
            params[unquote(key)] = unquote(value)
    if set(params) & _OVERRIDING_PARAMS:
        raise InvalidDatabaseDsn(
            "the database DSN sets host, port, user, password or dbname as a query parameter; "
            "put them in the URL itself")
    unknown = sorted(set(params) - set(_CARRIED_PARAMS))
    if unknown:
        raise InvalidDatabaseDsn(
            f"the database DSN sets {', '.join(unknown)}, which the PgBouncer sidecar cannot "
            f"carry out; it honours only {', '.join(_CARRIED_PARAMS)}: remove the others")
    sslmode = params.get("sslmode")
    if sslmode is not None and sslmode not in SSL_MODES:
        raise InvalidDatabaseDsn(
            f"the database DSN's sslmode must be one of {', '.join(SSL_MODES)}")
    if params.get("sslrootcert", "system") != "system":
        raise InvalidDatabaseDsn(
            "the database DSN's sslrootcert names a file, which does not exist in the pool's "
            "pods: use sslrootcert=system (the image's CA bundle) or leave it out")
    version = params.get("ssl_min_protocol_version")
    if version is not None and version not in _TLS_VERSIONS:
        raise InvalidDatabaseDsn(
            "the database DSN's ssl_min_protocol_version must be one of "
            + ", ".join(_TLS_VERSIONS))
    timeout = params.get("connect_timeout")
    if timeout is not None and (not timeout.isdigit() or int(timeout) < 1):
        raise InvalidDatabaseDsn(
            "the database DSN's connect_timeout must be a whole number of seconds above 0 "
            "(PgBouncer cannot wait forever)")
    name = params.get("application_name")
    if name is not None and (_CONTROL.search(name) or len(name) > 63):
        raise InvalidDatabaseDsn(
            "the database DSN's application_name must be at most 63 characters without control "
            "characters")
    if params.get("sslrootcert") == "system" and sslmode is None:
        sslmode = "verify-full"  # libpq's rule: sslrootcert=system implies verify-full
    return DsnOptions(sslmode=sslmode, ssl_min_protocol_version=version,
                      connect_timeout=int(timeout) if timeout is not None else None,
                      application_name=name)


def _check_usable(dsn: DatabaseDsn) -> None:
    for part, value in (("host", dsn.host), ("database name", dsn.dbname),
                        ("user name", dsn.user), ("password", dsn.password)):
        if _CONTROL.search(value):
            # A newline would end the ini line or the auth_file entry early.
            raise InvalidDatabaseDsn(
                f"the database DSN's {part} contains a control character (percent-encoded, "
                "e.g. %0A): PgBouncer cannot use it; change it")
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
