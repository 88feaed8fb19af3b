"""The queue directory: where each served pool's queue lives (pure: format only).

The metrics API server needs, per pool, the Redis URL (a credential, in a Secret the pool
references in its own namespace) and the Redis keys its runtime uses. Reading those Secrets
itself would need `get secrets` wherever pools live: for the network-facing server, in every
namespace of a cluster-wide install. The operator reads them anyway (it renders the pods'
configuration from them), so it publishes what the metrics API needs in one Secret of its
own namespace (`queues.py` keeps the entries, `publisher.py` writes them), and the metrics
API may read that one Secret by name and no other (`metrics_api/pools.py`).

The Secret holds one key per publishing operator: `queues.json.gz` for the operator of the
release that runs the metrics API, and `queues.<namespace>.<name>.json.gz` for each other
release sharing that metrics API (`metricsApi.shared`: one external metrics API per cluster
serves every release's pools; each operator writes only its own key, under a field manager of
its own). Each key is gzip of
`{"version": 1, "pools": [{"namespace", "name", "url", "keys": {prefix, stream, group, dead}}]}`
(gzip keeps thousands of pools far below a Secret's 1 MiB). An entry that does not parse is
skipped, never the whole directory; the metrics API reads every key (`decode_all`).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent_runtime.queue.keys import Keys

DATA_KEY = "queues.json.gz"
_SHARED_KEY = re.compile(r"^queues\.[a-z0-9][-a-z0-9.]*\.json\.gz$")
FORMAT_VERSION = 1
PoolKey = tuple[str, str]


class DirectoryError(Exception):
    """The directory cannot be read at all (not a gzip of the JSON above)."""


@dataclass(frozen=True)
class QueueEntry:
    """One pool's queue: its keys and its Redis URL (a credential: never logged)."""

    namespace: str
    name: str
    keys: Keys
    redis_url: str = field(repr=False)
    target_per_pod: int | None = None
    """The HPA's backlog target per pod (None: the pool does not autoscale)."""
    lease_seconds: int | None = None
    """The pool's task lease: a pod that renewed within it is live."""

    @property
    def key(self) -> PoolKey:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class Directory:
    entries: dict[PoolKey, QueueEntry]
    skipped: int = 0
    """Entries that did not parse (left out)."""


def parse_reference(text: str) -> tuple[str, str]:
    """`namespace/name` of the directory Secret."""
    namespace, sep, name = text.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise ValueError(f"expected NAMESPACE/NAME, got {text!r}")
    return namespace, name


def shared_key(namespace: str, name: str) -> str:
    """The data key of a release that publishes into another release's directory."""
    return f"queues.{namespace}.{name}.json.gz"


def is_directory_key(key: str) -> bool:
    return key == DATA_KEY or bool(_SHARED_KEY.match(key))


def encode(entries: Iterable[QueueEntry], key: str = DATA_KEY) -> dict[str, str]:
    """The Secret `data` under `key` (base64 values, as the API server takes them)."""
    pools = [{"namespace": e.namespace, "name": e.name, "url": e.redis_url,
              "keys": {"prefix": e.keys.prefix, "stream": e.keys.stream,
                       "group": e.keys.group, "dead": e.keys.dead},
              **({"targetPerPod": e.target_per_pod} if e.target_per_pod else {}),
              **({"leaseSeconds": e.lease_seconds} if e.lease_seconds else {})}
             for e in sorted(entries, key=lambda e: e.key)]
    text = json.dumps({"version": FORMAT_VERSION, "pools": pools}, separators=(",", ":"))
    # mtime=0: the same entries always give the same bytes.
    blob = gzip.compress(text.encode(), mtime=0)
    return {key: base64.b64encode(blob).decode()}


def decode(data: Mapping[str, str] | None, key: str = DATA_KEY) -> Directory:
    """The entries under `key` of a Secret's `data`; an empty or absent Secret (or key) is an
    empty directory."""
    encoded = (data or {}).get(key)
    if not encoded:
        return Directory({})
    try:
        document = json.loads(gzip.decompress(base64.b64decode(encoded)))
    except (binascii.Error, OSError, EOFError, zlib.error, ValueError) as error:
        raise DirectoryError(f"{key} is not gzip-compressed JSON: {error}") from None
    if not isinstance(document, dict) or document.get("version") != FORMAT_VERSION:
        raise DirectoryError(f"{key} has an unknown format (want version "
                             f"{FORMAT_VERSION})")
    entries: dict[PoolKey, QueueEntry] = {}
    skipped = 0
    for item in document.get("pools") or []:
        entry = _entry(item)
        if entry is None:
            skipped += 1
        else:
            entries[entry.key] = entry
    return Directory(entries, skipped)


def decode_all(data: Mapping[str, str] | None) -> Directory:
    """Every publisher's entries (what the metrics API serves). A key that cannot be read at
    all fails only when no key can be read; otherwise its pools are counted as skipped."""
    entries: dict[PoolKey, QueueEntry] = {}
    skipped = 0
    errors: list[str] = []
    keys = sorted(k for k in (data or {}) if is_directory_key(k))
    for key in keys:
        try:
            found = decode(data, key)
        except DirectoryError as error:
            errors.append(str(error))
            continue
        entries.update(found.entries)
        skipped += found.skipped
    if errors and len(errors) == len(keys):
        raise DirectoryError("; ".join(errors))
    return Directory(entries, skipped + len(errors))


def _entry(item: Any) -> QueueEntry | None:
    if not isinstance(item, dict) or not isinstance(item.get("keys"), dict):
        return None
    keys = item["keys"]
    texts = [item.get("namespace"), item.get("name"), item.get("url"),
             *(keys.get(k) for k in ("prefix", "stream", "group", "dead"))]
    if not all(isinstance(t, str) and t for t in texts):
        return None
    return QueueEntry(namespace=item["namespace"], name=item["name"], redis_url=item["url"],
                      keys=Keys(prefix=keys["prefix"], stream=keys["stream"],
                                group=keys["group"], dead=keys["dead"]),
                      target_per_pod=_positive(item.get("targetPerPod")),
                      lease_seconds=_positive(item.get("leaseSeconds")))


def _positive(value: Any) -> int | None:
    # Optional facts (older operators did not write them): anything else counts as absent.
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
