"""The chart README's RBAC table, parsed: what each ServiceAccount may do, and where.

`test_chart_render.py` checks that the rendered Roles and bindings are exactly this table;
`test_rbac_matrix.py` checks that the real API server answers every `kubectl auth can-i`
question as this table says. The table is the single statement of the chart's rights.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tests.plugins.chart import CHART

MODES = ("namespaced", "all")
"""`operator.watchNamespaces` (or the default: the release namespace) and
`operator.watchAllNamespaces`."""
CLUSTER = "*cluster*"
"""A grant's location when a ClusterRoleBinding gives it: every namespace, all at once too."""
WHERES = ("served", "release namespace", "shared", "kube-system", "cluster")
"""`shared`: the namespace of the release whose metrics API serves this one's pools
(`metricsApi.shared`); such rows name its objects with `<shared>` (its full name)."""
_HEADER = ["ServiceAccount", "mode", "where", "API group", "resources", "resource names",
           "verbs", "why"]


@dataclass(frozen=True)
class Row:
    account: str
    """`<fullname>` or `<fullname>-metrics-api`."""
    mode: str
    """"both", or one of MODES."""
    where: str
    group: str
    resources: tuple[str, ...]
    names: tuple[str, ...]
    verbs: tuple[str, ...]


@dataclass(frozen=True)
class Grant:
    """One right: `account` may `verb` `group`/`resource` (by `name` only, when set) at
    `location` (a namespace, or CLUSTER)."""

    account: str
    location: str
    group: str
    resource: str
    name: str | None
    verb: str


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _list(cell: str) -> tuple[str, ...]:
    return tuple(item.strip().strip("`") for item in cell.split(",") if item.strip())


def rows(readme: str | None = None) -> list[Row]:
    """The rows of the table in the README's "## RBAC" section."""
    text = readme if readme is not None else (CHART / "README.md").read_text()
    section = text.split("\n## RBAC\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert _cells(lines[0]) == _HEADER, lines[0]
    found = []
    for line in lines[2:]:
        account, mode, where, group, resources, names, verbs, _why = _cells(line)
        assert mode in ("both", *MODES), line
        assert where in WHERES, line
        found.append(Row(account.strip("`"), mode, where, "" if group == '""' else group,
                         _list(resources), _list(names), _list(verbs)))
    return found


def _certificate_row(row: Row) -> bool:
    """A right only the operator's certificate keeping needs (`metricsApi.tls.mode:
    operator`): its two Secrets and the APIService's caBundle."""
    return row.resources == ("apiservices",) or any(
        name.endswith(("-metrics-api-ca", "-metrics-api-serving-cert")) for name in row.names)


def grants(table: Sequence[Row], *, fullname: str, release_namespace: str, mode: str,
           served: Iterable[str], metrics_api: bool = True, operator_certs: bool = True,
           apiservice: bool = True, shared: tuple[str, str] | None = None) -> set[Grant]:
    """Every right the table gives in one install: `served` are the served namespaces of
    mode "namespaced" (ignored for "all", where they are every namespace). Without the
    metrics API its rows go; without operator-kept certificates (another
    `metricsApi.tls.mode`) theirs; without the APIService (`metricsApi.apiService.create`)
    the caBundle's. `shared` is (namespace, full name) of the release whose metrics API this
    one publishes to (with `metrics_api` False), else its rows go."""
    assert mode in MODES
    served = tuple(served)
    result: set[Grant] = set()
    for row in table:
        if row.mode not in ("both", mode):
            continue
        if row.where == "shared" and shared is None:
            continue
        account = row.account.replace("<fullname>", fullname)
        names = tuple(name.replace("<fullname>", fullname).replace("<shared>", shared[1])
                      if shared else name.replace("<fullname>", fullname)
                      for name in row.names)
        if not metrics_api and row.where != "shared" and (
                "metrics-api" in account or any("metrics-api" in n for n in names)
                or _certificate_row(row)):
            continue
        if _certificate_row(row) and not operator_certs:
            continue
        if row.resources == ("apiservices",) and not apiservice:
            continue
        if row.where == "served":
            locations: tuple[str, ...] = (CLUSTER,) if mode == "all" else served
        else:
            locations = {"release namespace": (release_namespace,), "kube-system":
                         ("kube-system",), "cluster": (CLUSTER,),
                         "shared": (shared[0],) if shared else ()}[row.where]
        for location in locations:
            for resource in row.resources:
                for verb in row.verbs:
                    for name in names or (None,):
                        result.add(Grant(account, location, row.group, resource, name, verb))
    return result


def allows(granted: set[Grant], account: str, namespace: str, group: str, resource: str,
           verb: str, name: str | None = None) -> bool:
    """Whether RBAC built from `granted` allows the request (`namespace` "" is a
    cluster-scoped resource, or a namespaced one in all namespaces at once)."""
    locations = (CLUSTER,) if not namespace else (CLUSTER, namespace)
    names = (None,) if name is None else (None, name)
    return any(Grant(account, location, group, resource, n, verb) in granted
               for location in locations for n in names)


_LIST_LINE = re.compile(r"^(\S*)\s+\[(.*?)\]\s+\[(.*?)\]\s+\[(.*?)\]\s*$")


def parse_can_i_list(output: str) -> list[tuple[str, str, tuple[str, ...], tuple[str, ...]]]:
    """`kubectl auth can-i --list` as (group, resource[/subresource], names, verbs) for the
    resource rules, and ("", "<url>", (), verbs) for the non-resource URL rules (`url` in
    angle brackets, so it never looks like a resource)."""
    found: list[tuple[str, str, tuple[str, ...], tuple[str, ...]]] = []
    for line in output.splitlines()[1:]:
        match = _LIST_LINE.match(line)
        assert match, f"cannot parse {line!r}"
        resource, urls, names, verbs = match.groups()
        if not resource:
            found += [("", f"<{url}>", (), tuple(verbs.split())) for url in urls.split()]
            continue
        base, _, subresource = resource.partition("/")
        plural, _, group = base.partition(".")
        full = f"{plural}/{subresource}" if subresource else plural
        found.append((group, full, tuple(names.split()), tuple(verbs.split())))
    return found
