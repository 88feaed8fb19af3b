"""Posting a reconcile's announcements (`announce.py`) as Events on the pool, and logging the
ones that say what was created or updated."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from agentpool_operator.announce import Announcement
from agentpool_operator.k8s import Kube

log = logging.getLogger(__name__)


async def post_announcements(kube: Kube, pool: dict[str, Any],
                             announcements: Sequence[Announcement]) -> None:
    meta = pool["metadata"]
    for kind, reason, message in announcements:
        if kind == "Normal" and reason in ("Created", "Updated"):
            log.info("%s/%s: %s", meta["namespace"], meta["name"], message)
        await kube.post_event(pool, kind, reason, message)
