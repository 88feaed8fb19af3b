"""PgBouncer's pool metrics, read from the pod's PgBouncer sidecar at every scrape and served on
the runtime's own `/metrics`, under the names prometheus-community's pgbouncer_exporter v0.11
uses (so dashboards and alerts written for it work unchanged).

Why in the runtime rather than the exporter sidecar: one container less per pod (no extra
image, memory or CPU), and the image of that exporter can be neither pulled nor built where
this project is tested (its Go module is not served by the module proxy), so a default that
ran it could never be tested. The runtime already serves `/metrics` on the port the pool's
PodMonitor scrapes.

Read like the exporter does: `SHOW POOLS`, `SHOW DATABASES` and `SHOW LISTS` on the admin
console, as the stats-only user (`stats_users`) whose URL the operator puts in the pod's
Secret. `pgbouncer_up` is 0 when PgBouncer cannot be read (the other series are then absent),
never an error of the whole scrape.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from agent_runtime.supervisor.pgwire import PgWireError, simple_queries

# pgbouncer_exporter v0.11 (collector.go): metric -> SHOW POOLS column, labels database, user.
POOL_COLUMNS = {
    "pgbouncer_pools_client_active_connections": "cl_active",
    "pgbouncer_pools_client_waiting_connections": "cl_waiting",
    "pgbouncer_pools_server_active_connections": "sv_active",
    "pgbouncer_pools_server_idle_connections": "sv_idle",
    "pgbouncer_pools_server_used_connections": "sv_used",
    "pgbouncer_pools_server_testing_connections": "sv_tested",
    "pgbouncer_pools_server_login_connections": "sv_login",
    # Whole seconds, like v0.11, which ignores `maxwait_us`.
    "pgbouncer_pools_client_maxwait_seconds": "maxwait",
}
POOL_LABELS = ("database", "user")
# metric -> SHOW DATABASES column, labels the database's alias (`name`) and its settings.
DATABASE_COLUMNS = {
    "pgbouncer_databases_pool_size": "pool_size",
    "pgbouncer_databases_reserve_pool": "reserve_pool",
    "pgbouncer_databases_max_connections": "max_connections",
    "pgbouncer_databases_current_connections": "current_connections",
}
DATABASE_LABELS = ("name", "host", "port", "database", "force_user", "pool_mode")
# metric -> SHOW LISTS item (no labels).
LIST_ITEMS = {
    "pgbouncer_used_servers": "used_servers",
    "pgbouncer_free_servers": "free_servers",
    "pgbouncer_login_servers": "login_servers",
    "pgbouncer_used_clients": "used_clients",
    "pgbouncer_free_clients": "free_clients",
    "pgbouncer_login_clients": "login_clients",
}
UP = "pgbouncer_up"
METRIC_NAMES = frozenset([*POOL_COLUMNS, *DATABASE_COLUMNS, *LIST_ITEMS, UP])
QUERIES = ["SHOW POOLS", "SHOW DATABASES", "SHOW LISTS"]

Row = dict[str, str | None]


def _number(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "") else 0.0
    except ValueError:
        return 0.0


def _labelled(name: str, column: str, labels: tuple[str, ...], rows: Iterable[Row]
              ) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, f"PgBouncer {column}.", labels=list(labels))
    for row in rows:
        family.add_metric([row.get(label) or "" for label in labels], _number(row.get(column)))
    return family


def families(pools: list[Row], databases: list[Row], lists: list[Row]
             ) -> list[GaugeMetricFamily]:
    """The metric families for one reading of the three SHOW commands."""
    found = [_labelled(name, column, POOL_LABELS, pools)
             for name, column in POOL_COLUMNS.items()]
    found += [_labelled(name, column, DATABASE_LABELS, databases)
              for name, column in DATABASE_COLUMNS.items()]
    items = {row.get("list"): _number(row.get("items")) for row in lists}
    for name, item in LIST_ITEMS.items():
        if item in items:
            found.append(GaugeMetricFamily(name, f"PgBouncer {item}.", value=items[item]))
    found.append(GaugeMetricFamily(UP, "1 if PgBouncer's admin console answered.", value=1))
    return found


class _Reading(Collector):
    def __init__(self, found: list[GaugeMetricFamily]) -> None:
        self._found = found

    def collect(self) -> Iterator[GaugeMetricFamily]:
        return iter(self._found)


def exposition(found: list[GaugeMetricFamily]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Reading(found))
    return generate_latest(registry)


class PgBouncerMetrics:
    """Reads the sidecar at each call; renders Prometheus text."""

    def __init__(self, stats_url: str, timeout: float = 2.0) -> None:
        self._url = stats_url
        self._timeout = timeout

    async def render(self) -> bytes:
        try:
            pools, databases, lists = await simple_queries(self._url, QUERIES, self._timeout)
        except PgWireError:
            return exposition([GaugeMetricFamily(
                UP, "1 if PgBouncer's admin console answered.", value=0)])
        return exposition(families(pools, databases, lists))
