"""Label and annotation keys the operator writes on every child and pod of a pool.

Declared with the API because they are part of it: users may not set these keys in
`spec.pod.labels`/`annotations` (the CRD refuses them), since the operator's values would
silently replace theirs, and the selectors that tie a pool to its pods depend on them.
`builders.common` builds the labels from these keys.
"""

from __future__ import annotations

NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
PART_OF_LABEL = "app.kubernetes.io/part-of"
POOL_LABEL = "agentpool.dev/pool"
CONFIG_HASH_ANNOTATION = "agentpool.dev/config-hash"

RESERVED_KEY_PREFIX = "agentpool.dev/"
"""Every key under this prefix is the operator's (labels and annotations)."""
RESERVED_LABELS = (NAME_LABEL, INSTANCE_LABEL, COMPONENT_LABEL, MANAGED_BY_LABEL, PART_OF_LABEL)
"""The operator's label keys outside its own prefix."""
