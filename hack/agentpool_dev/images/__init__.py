"""Container images built on this machine, without a registry: see `catalog` (what),
`build` (when: once per content hash), `buildah` and `inputs` (how)."""

from agentpool_dev.images.build import Built, cache_dir, ensure, keys, node_archives
from agentpool_dev.images.catalog import Image, catalog

__all__ = ["Built", "Image", "cache_dir", "catalog", "ensure", "keys", "node_archives"]
