"""The derived `<pool>-pgbouncer` Secret and the DSN parser behind it."""

from __future__ import annotations

import base64
import dataclasses

import pytest

from agentpool_operator.builders import (
    InvalidDatabaseDsn,
    build_secret,
    parse_database_dsn,
)
from tests.unit.operator.builder_samples import FULL_SECRETS, full_ctx, minimal_ctx

# The stats user's entries have their own tests (test_builders_pgbouncer_metrics.py).
NO_EXPORTER = {"monitoring": {"pgbouncerExporter": {"enabled": False}}}


def _decoded(dsn: str) -> dict[str, str]:
    secret = build_secret(
        full_ctx(NO_EXPORTER, secrets=dataclasses.replace(FULL_SECRETS, database_dsn=dsn))
    )
    assert secret is not None
    return {k: base64.b64decode(v).decode("utf-8") for k, v in secret["data"].items()}


def test_parses_a_plain_url() -> None:
    dsn = parse_database_dsn("postgresql://agents:pw@db.example.com:6543/agentdb")
    assert (dsn.host, dsn.port, dsn.dbname, dsn.user, dsn.password) == (
        "db.example.com",
        6543,
        "agentdb",
        "agents",
        "pw",
    )


def test_postgres_scheme_default_port_and_percent_encoding() -> None:
    dsn = parse_database_dsn("postgres://us%40er:p%40ss%3Aw%2Fo%20rd@db/my_db?sslmode=require")
    assert dsn.port == 5432
    assert dsn.user == "us@er"
    assert dsn.password == "p@ss:w/o rd"
    assert dsn.dbname == "my_db"


def test_missing_database_name_defaults_to_the_user() -> None:
    assert parse_database_dsn("postgresql://agents:pw@db").dbname == "agents"


def test_ipv6_host() -> None:
    dsn = parse_database_dsn("postgresql://u:pw@[2001:db8::1]:5433/d")
    assert (dsn.host, dsn.port) == ("2001:db8::1", 5433)


def test_password_is_not_in_the_repr() -> None:
    assert "s3cret" not in repr(parse_database_dsn("postgresql://u:s3cret@db/d"))


@pytest.mark.parametrize(
    "dsn",
    [
        None,
        "",
        "mysql://u:s3cret@db/d",
        "host=db user=u password=s3cret",
        "postgresql://u:s3cret@/d",
        "postgresql://:s3cret@db/d",
        "postgresql://u@db/d",
        "postgresql://u:s3cret@db:notaport/d",
        "postgresql://u:s3cret@db:99999/d",
        "postgresql://u:s3cret@db:0/d",
        "postgresql://u:s3cret@[db/d",
        "postgresql://u:s3cret@db1,db2/d",
        "postgresql://u:s3cret@db/d?host=other",
        "postgresql://u:s3cret@db/pgbouncer",
        "postgresql://u:s3cret@db/we%20ird",
        "postgresql://u:s3cret%0A@db/d",
    ],
)
def test_unusable_dsn_raises_without_revealing_it(dsn: str | None) -> None:
    with pytest.raises(InvalidDatabaseDsn) as caught:
        parse_database_dsn(dsn)
    assert isinstance(caught.value, ValueError)
    assert "s3cret" not in str(caught.value)
    assert caught.value.__cause__ is None
    if dsn:
        assert dsn not in str(caught.value)


def test_build_children_reports_a_missing_dsn() -> None:
    ctx = full_ctx(secrets=dataclasses.replace(FULL_SECRETS, database_dsn=None))
    with pytest.raises(InvalidDatabaseDsn):
        build_secret(ctx)


def test_no_secret_without_a_database() -> None:
    assert build_secret(minimal_ctx()) is None


def test_secret_shape_and_base64_data() -> None:
    secret = build_secret(full_ctx())
    assert secret is not None
    assert (secret["apiVersion"], secret["kind"], secret["type"]) == ("v1", "Secret", "Opaque")
    assert "stringData" not in secret
    assert sorted(secret["data"]) == [
        "database-url", "databases.ini", "pgbouncer-stats-url", "userlist.txt"]
    without_exporter = build_secret(full_ctx(NO_EXPORTER))
    assert without_exporter is not None
    assert sorted(without_exporter["data"]) == ["database-url", "databases.ini", "userlist.txt"]


def test_secret_contents() -> None:
    data = _decoded("postgresql://agents:pw@postgres.data.svc/agents")
    # No user= or password=: a forced user would let every userlist.txt user (the exporter's
    # stats user too) into the database; PgBouncer logs in as the client, with its password.
    assert data["databases.ini"] == (
        "[databases]\nagents = host='postgres.data.svc' port='5432' dbname='agents'\n"
    )
    assert data["userlist.txt"] == '"agents" "pw"\n'
    assert data["database-url"] == "postgresql://agents:pw@127.0.0.1:6432/agents"


def test_quotes_follow_pgbouncer_rules() -> None:
    data = _decoded("postgresql://o%27brien:a%22b%27c%20d@db/d")
    # The auth_file doubles double quotes; the credentials are nowhere else but the URL.
    assert data["userlist.txt"] == '"o\'brien" "a""b\'c d"\n'
    assert "brien" not in data["databases.ini"]
    assert "b'c d" not in data["databases.ini"]
    # The runtime's URL is percent-encoded again, so it parses back to the same values.
    url = parse_database_dsn(data["database-url"])
    assert (url.user, url.password) == ("o'brien", "a\"b'c d")
    assert (url.host, url.port) == ("127.0.0.1", 6432)


# --- Nothing in the DSN is silently changed or dropped --------------------------------------

@pytest.mark.parametrize(("dsn", "says"), [
    # urlsplit deletes a raw newline or tab: PgBouncer would log in with another password.
    ("postgresql://u:pass\nword@db/d", "raw control character"),
    ("postgresql://u:pass\tword@db/d", "raw control character"),
    ("postgresql://u:pass%0Aword@db/d", "password contains a control character"),
    ("postgresql://u:pa#ss@db/d", "percent-encode reserved characters"),
    ("postgresql://u:pw@db/d?sslcert=/tmp/c.pem&keepalives=1", "keepalives, sslcert"),
    ("postgresql://u:pw@db/d?sslmode=sometimes", "sslmode must be one of"),
    ("postgresql://u:pw@db/d?sslrootcert=/etc/ca.pem", "use sslrootcert=system"),
    ("postgresql://u:pw@db/d?connect_timeout=0", "connect_timeout must be a whole number"),
    ("postgresql://u:pw@db/d?ssl_min_protocol_version=SSLv3", "ssl_min_protocol_version"),
])
def test_what_pgbouncer_cannot_carry_out_is_refused_with_the_reason(dsn: str, says: str) -> None:
    with pytest.raises(InvalidDatabaseDsn, match=says):
        parse_database_dsn(dsn)


def _ini(dsn: str) -> str:
    from agentpool_operator.builders import build_config_map

    ctx = full_ctx(NO_EXPORTER, secrets=dataclasses.replace(FULL_SECRETS, database_dsn=dsn))
    ini: str = build_config_map(ctx)["data"]["pgbouncer.ini"]
    return ini


def test_tls_and_timeout_parameters_reach_pgbouncer() -> None:
    ini = _ini("postgresql://u:pw@db/d?sslmode=verify-full&ssl_min_protocol_version=TLSv1.2"
               "&connect_timeout=7")
    assert "server_tls_sslmode = verify-full" in ini
    assert "server_tls_ca_file = /etc/ssl/certs/ca-certificates.crt" in ini
    assert "server_tls_protocols = tlsv1.2,tlsv1.3" in ini
    assert "server_connect_timeout = 7" in ini
    # sslrootcert=system alone means verify-full, as in libpq.
    assert "server_tls_sslmode = verify-full" in _ini("postgresql://u:pw@db/d?sslrootcert=system")
    assert "server_tls" not in _ini("postgresql://u:pw@db/d")
    assert "server_tls_sslmode = require" in _ini("postgresql://u:pw@db/d?sslmode=require")


def test_the_application_name_travels_with_the_runtime_connection() -> None:
    data = _decoded("postgresql://u:pw@db/d?application_name=research%20agents")
    assert data["database-url"] == (
        "postgresql://u:pw@127.0.0.1:6432/d?application_name=research%20agents")
    assert "application_name" not in data["databases.ini"]
